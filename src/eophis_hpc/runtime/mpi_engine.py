"""The MPI engine of a tunnel: the workers' loop over MPI (layer 7).

The loop: wait for the model root's note naming the next exchange and step, complete the
pre-posted receives of its inputs (halos already filled by the plan), post the receives of the
exchange's next occurrence into a second set of batches (``pipeline``, the default: occurrence
n + 1 arrives while the model runs on occurrence n), call the model through the
:class:`~.invoker.Invoker` on the batch ``(tiles, levels, H + 2h, W + 2h)``, start sending each
output's own boxes back, swap the two sets of batches. Buffers and MPI requests are made once,
before the first step.
"""
from __future__ import annotations

import sys
import time
import traceback

import numpy as np

from .. import device as devmod
from .. import staging
from ..errors import CouplingError
from ..protocol.wire import TAG_DATA
from ..transport.mpi import Link, Receiver, Sender
from ..transport.mpi import handshake
from ..transport.mpi import strategies
from ..transport.mpi.node import Node, share_fields
from ..transport.mpi.notes import NoteInbox
from .engine import Engine
from .invoker import Invoker


class MpiEngine(Engine):
    """Serves a tunnel's declaration to model ranks over MPI (``Tunnel(transport="mpi")``)."""

    def __init__(self, tunnel):
        super().__init__(tunnel)
        self.link = None
        self.notes: list[str] = []  # choices made for the user (strategy switches)
        self.policy = tunnel.policy
        self.feed = None
        self.held_note = None
        self.inbox = None
        self.sent: dict = {}  # output -> what its Sender read last (strategies that read late)
        self.node = None

    # ------------------------------------------------------------------ set-up
    def open(self) -> None:
        """Join the coupled job: handshake with the model ranks, make the buffers and persistent
        requests, post the first receives."""
        if self.link is not None:
            return
        tnl = self.tunnel
        self.link = Link("worker", world=tnl.world, timeout=tnl.timeout)
        self.rank = self.link.rank
        options = {"strategy": tnl.strategy, "explicit": tnl.strategy_explicit,
                   "pipeline_chunk": tnl.pipeline_chunk}
        self.layout, agreed = handshake.worker_side(self.link, tnl.grid, tnl.halo, tnl.schedule,
                                                    self._tiles_wanted(), options, tnl.timeout)
        self.strategy = agreed["strategy"]
        if agreed["client"] == "python":  # data messages on one intracommunicator
            self.link.merge()
        if self.strategy != tnl.strategy:
            self.notes.append(f"strategy {self.strategy!r} (the {agreed['client']} model side "
                              f"cannot pair with the default {tnl.strategy!r})")
        w = self.link.rank
        tiles = self.layout.tiles_of[w]
        boxes = [self.layout.dst.boxes[d] for d in tiles]
        self.policy = devmod.staging_policy(tnl.framework, tnl.device)  # MPI is loaded now
        self.feed = staging.Feed(tnl.schedule, tiles, boxes, self.layout.batch_shape, tnl.halo,
                                 tnl.dtype, self.policy, tnl.chunks, tnl.stack, tnl.land, tnl.fill,
                                 self.timings, pipeline=tnl.pipeline)
        self.invoker = Invoker(tnl.schedule, tnl.registry, self.feed, boxes, tiles,
                               tnl.check_finite)
        self.receivers, self.senders = {}, {}
        chosen = self._strategies()
        shared = self._share(chosen)
        common = {"backend": tnl.backend, "timeout": tnl.timeout, "peer_label": "model rank",
                  "chunk": tnl.pipeline_chunk, "peer_base": self.link.peer_base}
        for spec in tnl.schedule.fields.values():
            tag = TAG_DATA + spec.index
            wire = np.dtype(spec.dtype)
            strategy = chosen[spec.name]
            if spec.direction == "in":
                rcv = Receiver(self.link.data, self.layout.worker_recv_routes(spec.point, w),
                               spec.levels, wire, tag, strategy,
                               fills=self.layout.worker_fills(spec.point, w), fill=tnl.fill,
                               name=f"worker {w}: receiving {spec.name!r}",
                               shared=shared.get(spec.name),
                               **{**common, **self.feed.recv_options()})
                rcv.bind(self.feed.recv_target(spec.name))
                if self.feed.pipelined(spec.name):
                    rcv.bind(self.feed.recv_target(spec.name, ahead=True))
                self.receivers[spec.name] = rcv
            else:
                self.senders[spec.name] = Sender(
                    self.link.data, self.layout.worker_send_routes(spec.point, w), spec.levels,
                    wire, tag, strategy, name=f"worker {w}: sending {spec.name!r}",
                    shared=shared.get(spec.name), **{**common, **self.feed.send_options()})
        for e in range(len(tnl.exchanges)):
            self._post(e)
        self.inbox = NoteInbox(self.link, tnl.timeout)

    def _strategies(self) -> dict:
        """The strategy of every field: the tunnel's, or the fallback where the batch (or the
        outputs) cannot be used in place (a cast, stacking, land tiles, device buffers)."""
        tnl, out = self.tunnel, {}
        for spec in tnl.schedule.fields.values():
            if spec.direction == "in":
                wire = np.dtype(spec.dtype)
                batch_dtype = tnl.dtype if tnl.dtype is not None else wire
                why = self.feed.not_plain(spec.name) or (
                    f"cast {wire} -> {batch_dtype}" if batch_dtype != wire else None)
            else:
                why = self.feed.outputs_not_plain()
            out[spec.name] = self._strategy_for(spec.name, why)
        return out

    def _share(self, chosen: dict) -> dict:
        """With a strategy that needs the node (collective with the model ranks): the shared
        windows, this worker's batch of each input using it moved into its window."""
        tnl = self.tunnel
        if not strategies.STRATEGIES[self.strategy].needs_node:
            return {}
        n = len(self.layout.tiles_of[self.link.rank])
        mine = {}
        for spec in tnl.schedule.fields.values():
            if chosen[spec.name] != self.strategy:
                continue
            why = None
            if spec.direction == "in" and self.policy.pinned:  # keep the pinned staging buffer
                why = "pinned staging buffers"
            elif spec.direction == "out" and tnl.exchanges[spec.exchange].lag:
                why = "lagged: the model ranks receive several occurrences ahead"
            if why:  # no segment here: the model ranks see none and use MPI for this field
                self.notes.append(f"{spec.name!r}: no shared window ({why}); "
                                  f"{strategies.STRATEGIES[self.strategy].remote} strategy")
                continue
            if spec.direction == "in":  # the batch, and its twin where the input has a second set
                shape = self.feed.recv_target(spec.name).shape
                slots = 2 if self.feed.pipelined(spec.name) else 1
                mine[spec.name] = (slots * shape[0],) + tuple(shape[1:])
            else:
                mine[spec.name] = (n, spec.levels) + tuple(self.layout.tile_shape)
        self.node = Node(self.link)
        shared = share_fields(self.node, self.layout, tnl.schedule, mine)
        self.notes.append(f"{self.strategy}: {self.node.describe('model rank')}; the others over "
                          f"MPI ({strategies.STRATEGIES[self.strategy].remote})")
        for spec in tnl.schedule.fields.values():
            if spec.direction == "in" and spec.name in mine:
                seg = shared[spec.name].mine
                rows = seg.shape[0] // shared[spec.name].slots
                self.feed.adopt(spec.name, seg[:rows], seg[rows:] if rows < len(seg) else None)
        return shared

    def _strategy_for(self, name: str, why: str | None) -> str:
        """The tunnel's strategy, or the registry's fallback (noted) where it works in place
        and the batch is not a plain host array (``why``)."""
        chosen, note = strategies.for_field(self.strategy, why)
        if note:
            self.notes.append(f"{name!r}: {note}")
        return chosen

    def _tiles_wanted(self) -> int | None:
        """Total tiles: the ``tiles`` argument, else ``tiles_per_worker`` from the settings file
        times the workers, else one per worker."""
        tnl = self.tunnel
        if tnl.n_tiles is not None:
            return tnl.n_tiles
        per = tnl.settings.get("tiles_per_worker")
        return None if per is None else per * self.link.size

    def _post(self, e: int, ahead: bool = False) -> None:
        for spec in self.tunnel.schedule.inputs_of(e):
            self.receivers[spec.name].post(self.feed.recv_target(spec.name, ahead=ahead))

    def describe(self) -> str:
        """The staging policy in force and the choices made for this tunnel."""
        tnl = self.tunnel
        lines = [f"staging: {self.policy.describe()}; chunks={tnl.chunks}"
                 + (f"; land tiles left out by {tnl.land!r}" if tnl.land else "")]
        lines += [f"  {note}" for note in dict.fromkeys(self.notes)]
        if self.inbox is not None:
            lines.append(f"  {self.inbox.describe()}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ serving
    def receive_static(self, name: str):
        self.open()
        exchanges = self.tunnel.exchanges
        while name not in self.static:
            e, step = self._next_note()
            if e < 0 or not exchanges[e].static:
                self.held_note = (e, step)
                raise CouplingError(f"Tunnel.receive({name!r}): the model ranks did not send it "
                                    f"before {'closing' if e < 0 else f'step {step}'}")
            self._occurrence([e], step)
        return self.feed.static_field(name)

    def serve(self, steps: int | None) -> dict:
        self.open()
        try:
            self._loop(steps)
        except Exception as exc:
            tb = traceback.format_exc()
            print(f"eophis_hpc worker {self.link.rank}: aborting the coupled job: "
                  f"{type(exc).__name__}: {exc}\n{tb}", file=sys.stderr, flush=True)
            time.sleep(0.5)  # let mpiexec forward the output before the job is torn down
            self.link.abort(1)
        summary = self.timings.summary()
        self._teardown()
        return summary

    def _loop(self, steps: int | None) -> None:
        tnl = self.tunnel
        done = 0
        while steps is None or done < steps:
            e, step = self._next_note()
            if e < 0:
                break
            group = [e]
            if tnl.registry.router is not None and not tnl.exchanges[e].static:
                due = [x for x, ex in enumerate(tnl.exchanges)
                       if not ex.static and tnl.schedule.due(x, step)]
                while len(group) < len(due):
                    e2, step2 = self._next_note()
                    if e2 not in due or e2 in group or step2 != step:
                        raise CouplingError(
                            f"router: at step {step} the model ranks must put the inputs of every "
                            f"due exchange {due} before any get (got exchange {e2} at step {step2})")
                    group.append(e2)
            self._occurrence(group, step)
            done += 1

    def _next_note(self) -> tuple[int, int]:
        """The model root's next (exchange, step) note; (-1, -1) ends the run."""
        if self.held_note is not None:
            note, self.held_note = self.held_note, None
            return note
        t0 = time.perf_counter()
        note = self.inbox.next()
        t1 = time.perf_counter()
        self.timings.add("wait", t1 - t0)
        self.timings.span("wait", t0, t1)
        return note

    def _occurrence(self, group: list[int], step: int) -> None:
        """Receive the inputs of the exchanges in ``group`` (due at ``step``), call the model,
        send the outputs, post the receives of the next occurrence."""
        tnl, feed = self.tunnel, self.feed
        t0 = time.perf_counter()
        inputs = self.invoker.due_inputs(group)
        for spec in inputs:
            self.receivers[spec.name].wait(feed.recv_target(spec.name), sign=spec.sign)
            self.timings.add_bytes(spec.name, self.receivers[spec.name].bytes)
        t1 = time.perf_counter()
        self.timings.add("recv", t1 - t0)
        self.timings.span("recv", t0, t1)
        static = tnl.exchanges[group[0]].static
        if static:
            for spec in inputs:
                self.static[spec.name] = feed.recv_target(spec.name)
            feed.static_received(group[0])
            if not tnl.exchanges[group[0]].outputs:
                return
        elif not feed.land_ready:
            raise CouplingError(f"land={tnl.land!r}: the model ranks must put this static field "
                                f"before step {step}'s exchanges")
        specs = self.invoker.outputs(group)
        pipelined = not static and all(feed.pipelined(spec.name) for spec in inputs)
        if pipelined:  # occurrence n + 1 arrives into the other batches while the model runs
            self._release([feed.recv_target(spec.name, ahead=True) for spec in inputs], specs)
            for e in group:
                self._post(e, ahead=True)
        for spec in specs:  # MPI may still read the last outputs (pinned buffers are reused)
            if self.senders[spec.name].reads_late:
                self.senders[spec.name].wait()
        self.inbox.poll()  # a leader passes the next note on before the model runs
        t_model = time.perf_counter()
        targets = self.invoker.call(group, step)
        t2 = time.perf_counter()
        self.timings.span("model", t_model, t2)
        for spec in specs:
            target, offset = targets[spec.name]
            sender = self.senders[spec.name]
            if sender.in_place:
                target = np.ascontiguousarray(target, dtype=spec.dtype)
            if sender.reads_late:
                self.sent[spec.name] = target
            sender.start(target, offset)
            self.timings.add_bytes(spec.name, sender.bytes)
        if pipelined:
            feed.flip([spec.name for spec in inputs])
        elif not static:
            self._release([feed.recv_target(spec.name) for spec in inputs], specs)
            for e in group:
                self._post(e)
        self.inbox.poll()
        t3 = time.perf_counter()
        self.timings.add("send", t3 - t2)
        self.timings.span("send", t2, t3)

    def _release(self, batches: list, specs: list) -> None:
        """Complete the sends of ``specs`` that may still read one of ``batches`` (a model
        that returns a view of its inputs), before receives overwrite them (an output that is
        not one array, read late: always)."""
        for spec in specs:
            sender = self.senders[spec.name]
            last = self.sent.get(spec.name)
            if not sender.reads_late or last is None:
                continue
            if not isinstance(last, np.ndarray) or any(
                    isinstance(b, np.ndarray) and np.may_share_memory(last, b) for b in batches):
                sender.wait()

    def _teardown(self) -> None:
        if self.inbox is not None:
            self.inbox.close()  # the last note passed on has left
        for obj in list(self.receivers.values()) + list(self.senders.values()):
            obj.close()
        if self.node is not None:
            self.node.close()
        if self.tunnel.verbose:
            report = self.report()
            if self.link.is_root and report:
                print(report, flush=True)
        self.link.close()

    def report(self) -> str:
        """Timings of every worker (collective over the workers) after worker 0's staging
        policy; the text on worker 0."""
        tables = self.link.comm.gather(self.timings.table(f"worker {self.link.rank} timings"),
                                       root=0)
        return "\n".join([self.describe()] + tables) if self.link.is_root else ""
