"""The model's side of one worker (layer 6): the batches the receives fill, their device twins,
land tiles left out, stacked inputs, chunks, and the model calls with host-to-device and
device-to-host copies overlapped on streams owned by the tunnel.

What the tunnel sees: :meth:`Feed.recv_target` (what a Receiver unpacks into),
:meth:`Feed.run` (call the model over the chunks of a batch, return per output what a Sender
packs from), :meth:`Feed.static_received` (after a static exchange: land rows, static fields
moved to where the model runs). How the batches move is :func:`device.staging_policy`'s choice.

No gather copy on the hot path: land tiles are left out by remapping tile indices
(:class:`TileRows`: ``target[k]`` is the batch row of tile ``k``, None for a land tile on the
receive side, a tile of the fill value on the send side), chunked outputs are read in place
(:class:`ChunkRows`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import device
from . import checks
from .errors import CouplingError


class TileRows:
    """``array`` seen by tile: ``self[k]`` is ``array[row_of[k]]``, or ``spare`` when tile ``k``
    has no row (None on the receive side: nothing is unpacked)."""

    def __init__(self, array, row_of: list, spare=None):
        self.array, self.row_of, self.spare = array, row_of, spare

    def __getitem__(self, k: int):
        r = self.row_of[k]
        return self.spare if r is None else self.array[r]

    def __len__(self) -> int:
        return len(self.row_of)


class ChunkRows:
    """Rows of a batch produced chunk by chunk: ``self[r]`` is row ``r`` of the chunk that
    holds it (no concatenation)."""

    def __init__(self, chunks: list):
        self.chunks = chunks  # [(r0, r1, array)]

    def __getitem__(self, r: int):
        for r0, r1, arr in self.chunks:
            if r0 <= r < r1:
                return arr[r - r0]
        raise IndexError(r)


@dataclass
class Group:
    """One keyword of the model: a field, or an exchange's inputs stacked along channels."""

    keyword: str
    fields: list
    levels: int
    dtype: np.dtype
    static: bool
    lagged: bool = False

    @property
    def channels(self) -> int:
        return self.levels * len(self.fields)


class Feed:
    """Batches of one worker and the model calls over them.

    ``tiles``: global indices of the worker's tiles, ``boxes`` their own boxes, ``hw`` the batch
    tile shape with the halo; ``dtype`` the model dtype (None: each exchange's wire dtype);
    ``chunks`` the number of model calls per batch; ``stack`` the tunnel's default for
    exchanges that do not set it; ``land`` the static field whose all-zero tiles are left out.

    ``pipeline``: time-dependent batches with a second receive buffer (True: all of them;
    None: those of lagged exchanges; False: none), so the receives of an exchange's next
    occurrence can be posted (:meth:`recv_target` with ``ahead=True``) before the model runs on
    this one; :meth:`flip` swaps the two after the call. Both are made once.
    """

    def __init__(self, schedule, tiles, boxes, hw, halo: int, dtype, policy: device.Policy,
                 chunks: int, stack, land: str | None, fill: float, timings,
                 pipeline: bool | None = False):
        self.schedule, self.tiles, self.boxes = schedule, list(tiles), list(boxes)
        self.hw, self.halo, self.fill = tuple(hw), halo, fill
        self.policy, self.chunks, self.land, self.timings = policy, chunks, land, timings
        self.pipeline = pipeline  # True: every time-dependent batch; None: the lagged ones
        self.ahead: dict = {}  # keyword -> the second receive buffer (pipeline)
        self.ad = device.adapter(policy)
        self.groups: dict[str, Group] = {}
        self.where: dict[str, tuple[str, int]] = {}  # field -> (keyword, first channel)
        for ex in schedule.exchanges:
            if not ex.inputs:
                continue
            wire = np.dtype(ex.dtype)
            gdtype = np.dtype(dtype) if dtype is not None else wire
            name = ex.stack_name(stack)
            if name is not None:
                if name in schedule.fields and name not in ex.inputs:
                    raise ValueError(f"stack: keyword {name!r} is already a field name")
                self._add(Group(name, list(ex.inputs), ex.levels, gdtype, ex.static,
                                ex.lag > 0))
            else:
                for f in ex.inputs:
                    self._add(Group(f, [f], ex.levels, gdtype, ex.static, ex.lag > 0))
        if policy.framework == "jax" and not self.ad.jax.config.jax_enable_x64 and any(
                g.dtype == np.float64 for g in self.groups.values()):
            raise ValueError("framework='jax': float64 batches need "
                             "jax.config.update('jax_enable_x64', True) before the Tunnel is "
                             "made (JAX would silently use float32), or dtype='float32'")
        n = len(self.tiles)
        self.row_of: list = list(range(n))
        self.rows = np.arange(n)
        self.land_ready = land is None
        self.host: dict = {}
        self.dev: dict = {}
        self.static_model: dict = {}  # keyword -> the static batch where the model runs (rows)
        self._spares: dict = {}
        self._host_out: dict = {}
        self._published: set = set()
        if policy.mode == "staged" and policy.framework != "jax":
            self.s_h2d, self.s_d2h = self.ad.stream(), self.ad.stream()
        for g in self.groups.values():
            self._allocate(g, n)

    def _add(self, group: Group) -> None:
        if group.keyword in self.groups:
            raise ValueError(f"model keyword {group.keyword!r} is used twice")
        self.groups[group.keyword] = group
        for c, f in enumerate(group.fields):
            self.where[f] = (group.keyword, c * group.levels)

    def _allocate(self, g: Group, rows: int) -> None:
        shape = (rows, g.channels) + self.hw
        mode = self.policy.mode
        if mode != "direct":
            self.host[g.keyword] = self.ad.host_empty(shape, g.dtype, pinned=self.policy.pinned)
        if mode == "direct" or (mode == "staged" and self.policy.framework != "jax"):
            self.dev[g.keyword] = self.ad.device_empty(shape, g.dtype)
        second = self.pipeline or (self.pipeline is None and g.lagged)
        if second and not g.static:  # the receive side only: device copies are per call
            self.ahead[g.keyword] = (self.ad.device_empty(shape, g.dtype) if mode == "direct" else
                                     self.ad.host_empty(shape, g.dtype, pinned=self.policy.pinned))

    # ------------------------------------------------------------------ receive side
    def _buffer(self, keyword: str):
        return self.dev[keyword] if self.policy.mode == "direct" else self.host[keyword]

    def not_plain(self, name: str) -> str | None:
        """Why input ``name`` is not received into a contiguous host 4-D array of all tiles
        (which MPI datatypes could write), or None when it is."""
        kw, _ = self.where[name]
        g = self.groups[kw]
        if self.policy.mode == "direct":
            return "device buffers"
        if len(g.fields) > 1:
            return f"stacked in {kw!r}"
        if not g.static and self.land is not None:
            return "land tiles left out"
        return None

    def recv_target(self, name: str, ahead: bool = False):
        """What the Receiver of input ``name`` unpacks into (indexable by local tile);
        ``ahead``: the second buffer, for the exchange's next occurrence (pipeline)."""
        kw, c0 = self.where[name]
        g = self.groups[kw]
        buf = self.ahead[kw] if ahead else self._buffer(kw)
        if len(g.fields) == 1 and (g.static or self.land is None) and self.policy.mode != "direct":
            return buf
        view = buf[:, c0:c0 + g.levels]
        row_of = list(range(len(self.tiles))) if g.static else self.row_of
        return TileRows(view, row_of)

    def pipelined(self, name: str) -> bool:
        """Whether input ``name`` has a second receive buffer."""
        return self.where[name][0] in self.ahead

    def flip(self, names) -> None:
        """After the model ran on the batches of inputs ``names``: the buffers their next
        occurrence is being received into become the batches (no copy)."""
        bufs = self.dev if self.policy.mode == "direct" else self.host
        for kw in dict.fromkeys(self.where[n][0] for n in names):
            if kw in self.ahead:
                bufs[kw], self.ahead[kw] = self.ahead[kw], bufs[kw]

    def adopt(self, name: str, array, ahead=None) -> None:
        """Use ``array`` (shared memory, say) as the host batch of input ``name``, and ``ahead``
        as its second receive buffer when it has one; the batch must be plain
        (:meth:`not_plain`) and each array have the batch's shape and dtype."""
        kw, _ = self.where[name]
        old = self.host.get(kw)
        bad = self.not_plain(name) or old is None or (ahead is None) != (kw not in self.ahead)
        for arr in (array, ahead) if ahead is not None else (array,):
            bad = bad or arr is None or arr.shape != old.shape or arr.dtype != old.dtype
        if bad:
            raise ValueError(f"Feed.adopt({name!r}): needs a plain batch of shape "
                             f"{None if old is None else old.shape}"
                             f"{' and its second buffer' if kw in self.ahead else ''}")
        self.host[kw] = array
        if ahead is not None:
            self.ahead[kw] = ahead

    def outputs_not_plain(self) -> str | None:
        """Why outputs do not come back as one contiguous host 4-D array of all tiles."""
        if self.policy.mode == "direct":
            return "device buffers"
        if self.land is not None:
            return "land tiles left out"
        if self.chunks > 1 and (self.policy.mode == "host" or self.policy.framework == "jax"):
            return "outputs read chunk by chunk"
        return None

    def recv_options(self) -> dict:
        """Receiver keywords: device buffers and kernels in ``direct`` mode."""
        if self.policy.mode != "direct":
            return {}
        return {"alloc": lambda n, dt: self.ad.device_empty((n,), dt),
                "mpi_buf": device.mpi_buffer,
                "backend": device.device_backend(self.ad.kernel_stream)}

    def send_options(self) -> dict:
        if self.policy.mode != "direct":
            return {}
        opts = self.recv_options()
        opts["sync"] = device.synchronize
        return opts

    # ------------------------------------------------------------------ static fields
    def static_received(self, e: int) -> None:
        """After static exchange ``e``: the land rows if it holds the land field, then every
        received static field copied (once) where the model runs, land tiles left out."""
        ex = self.schedule.exchanges[e]
        if self.land is not None and self.land in ex.inputs:
            self._set_land()
        self._published |= {self.where[f][0] for f in ex.inputs}
        self._publish()

    def _set_land(self) -> None:
        kw, c0 = self.where[self.land]
        g = self.groups[kw]
        mask = self._buffer(kw)
        if self.policy.mode == "direct":
            mask = self.ad.download(mask)
        h = self.halo
        sea = []
        for k, b in enumerate(self.boxes):
            own = mask[k, c0:c0 + g.levels, h:h + b.j1 - b.j0, h:h + b.i1 - b.i0]
            if np.any(own != 0):
                sea.append(k)
        self.rows = np.asarray(sea, dtype=np.int64)
        self.row_of = [None] * len(self.tiles)
        for r, k in enumerate(sea):
            self.row_of[k] = r
        for g in self.groups.values():
            if not g.static:
                self._allocate(g, len(sea))
        self._host_out.clear()
        self.land_ready = True

    def _publish(self) -> None:
        """Static batches where the model runs: land rows only, on the device when there is
        one (a one-time copy, never on the hot path)."""
        mode = self.policy.mode
        for kw in self._published:
            buf = self._buffer(kw)
            if mode == "direct":
                host = self.ad.download(buf)
            else:
                host = buf
            if self.land is not None and self.land_ready:
                host = np.ascontiguousarray(host[self.rows])
            if mode == "host":
                self.static_model[kw] = self.ad.wrap_host(host)
            else:
                self.static_model[kw] = self.ad.upload(np.ascontiguousarray(host))

    def static_field(self, name: str):
        """Static field ``name`` as the model sees it (rows of the batch, where it runs)."""
        kw, c0 = self.where[name]
        t = self.static_model[kw]
        g = self.groups[kw]
        return t if len(g.fields) == 1 else t[:, c0:c0 + g.levels]

    # ------------------------------------------------------------------ model calls
    def n_rows(self) -> int:
        return len(self.rows)

    def ranges(self) -> list[tuple[int, int]]:
        """The chunks: contiguous row ranges, at most ``chunks``, none empty."""
        n = self.n_rows()
        bounds = np.linspace(0, n, min(self.chunks, n) + 1).round().astype(int) if n else [0]
        return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def global_tiles(self, r0: int, r1: int) -> np.ndarray:
        """Global tile indices of batch rows ``r0:r1``."""
        return np.asarray(self.tiles, dtype=np.int64)[self.rows[r0:r1]]

    def static_rows(self, r0: int, r1: int) -> dict:
        return {kw: t[r0:r1] for kw, t in self.static_model.items()}

    def run(self, keywords: list, call, specs: list) -> dict:
        """Call ``call(kwargs, r0, r1) -> {output: value}`` on every chunk of the batches of
        ``keywords``; returns ``{output: (target, offset)}`` for the Senders. Records ``model``
        (and ``h2d``, ``d2h``, ``device`` on a GPU) in the timings."""
        ranges = self.ranges()
        mode = self.policy.mode
        if keywords and all(self.groups[kw].static for kw in keywords):
            return self._run_static(keywords, call, specs)
        if mode == "staged" and self.policy.framework == "jax":
            chunks = self._run_jax(keywords, call, specs, ranges)
        elif mode == "staged":
            return self._run_staged(keywords, call, specs, ranges)
        else:
            t0 = time.perf_counter()
            chunks = {s.name: [] for s in specs}
            for r0, r1 in ranges:
                kwargs = {kw: self._model_view(kw, r0, r1) for kw in keywords}
                result = call(kwargs, r0, r1)
                for s in specs:
                    value = result[s.name]
                    self._check(s, [(r0, r1, value)])  # a bad dtype named before any view
                    if mode == "host":
                        value = np.ascontiguousarray(self.ad.host_view(value, f"output {s.name!r}"))
                    else:
                        value = self.ad.as_device(value)
                    chunks[s.name].append((r0, r1, value))
            if mode == "direct":  # the device is idle before MPI reuses any device buffer
                device.synchronize()
            self.timings.add("model", time.perf_counter() - t0)
        return {s.name: self._target(s, chunks[s.name]) for s in specs}

    def _run_static(self, keywords, call, specs) -> dict:
        """A static exchange with outputs (once): one call on the static batches where the
        model runs (land rows only), outputs brought to where the Senders read them."""
        n = self.n_rows()
        t0 = time.perf_counter()
        chunks = {s.name: [] for s in specs}
        if n:
            result = call({kw: self.static_model[kw] for kw in keywords}, 0, n)
            for s in specs:
                value = result[s.name]
                self._check(s, [(0, n, value)])
                value = (self.ad.as_device(value) if self.policy.mode == "direct" else
                         np.ascontiguousarray(device.host_view(value, f"output {s.name!r}")))
                chunks[s.name].append((0, n, value))
        self.timings.add("model", time.perf_counter() - t0)
        return {s.name: self._target(s, chunks[s.name]) for s in specs}

    def _model_view(self, kw: str, r0: int, r1: int):
        if self.policy.mode == "host":
            return self.ad.wrap_host(self.host[kw][r0:r1])
        return self.dev[kw][r0:r1]

    def _check(self, spec, chunks: list) -> tuple[tuple[int, int], np.dtype]:
        offset = dtype = None
        multi = len(chunks) > 1
        for r0, r1, value in chunks:
            where = f" (chunk of rows {r0}:{r1})" if multi else ""
            off = checks.output_offset(spec.name, value.shape, r1 - r0, spec.levels, self.hw,
                                       self.halo, where)
            dt = checks.output_dtype(spec.name, device.np_dtype(value), where)
            if offset is not None and (off != offset or dt != dtype):
                raise CouplingError(f"output {spec.name!r}: chunks differ in shape or dtype "
                                    f"({dt}{where} after {dtype})")
            offset, dtype = off, dt
        return offset, dtype

    def _target(self, spec, chunks: list):
        """What the Sender packs from: the output itself when it is one array of all tiles,
        else a :class:`TileRows` over the chunks with a fill tile for land tiles."""
        if not chunks:  # every tile of this worker is land
            H, W = self.hw
            h = self.halo
            shape = (spec.levels, H - 2 * h, W - 2 * h)
            return TileRows([], self.row_of, self._spare(shape, np.dtype(spec.dtype))), (0, 0)
        offset, dtype = self._check(spec, chunks)
        if len(chunks) == 1 and self.land is None and self.policy.mode != "direct":
            return chunks[0][2], offset
        shape = tuple(int(n) for n in chunks[0][2].shape[1:])
        return TileRows(ChunkRows(chunks), self.row_of, self._spare(shape, dtype)), offset

    def _spare(self, shape, dtype):
        """A tile of the fill value (what land tiles send back), made once per shape."""
        key = (shape, np.dtype(dtype).str)
        if key not in self._spares:
            host = np.full(shape, self.fill, dtype=dtype)
            self._spares[key] = host if self.policy.mode != "direct" else self.ad.upload(host)
        return self._spares[key]

    def _out_buffer(self, spec, value, rows: int, first: bool) -> np.ndarray:
        """The pinned host buffer the device-to-host copies of output ``spec`` land in (made
        again only when the output's shape or dtype changes between steps)."""
        shape = (rows,) + tuple(int(n) for n in value.shape[1:])
        dtype = device.np_dtype(value)
        buf = self._host_out.get(spec.name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            if not first:
                raise CouplingError(f"output {spec.name!r}: chunks differ in shape or dtype "
                                    f"({tuple(shape)} {dtype} after {buf.shape} {buf.dtype})")
            buf = self.ad.host_empty(shape, dtype, pinned=True)
            self._host_out[spec.name] = buf
        return buf

    def _run_staged(self, keywords, call, specs, ranges) -> dict:
        """GPU, MPI not CUDA-aware: every chunk's host-to-device copy is queued at once on the
        copy stream (the device batch has a slot per row, so no copy waits for a model), the
        model on chunk k waits only for chunk k's copy, its outputs go back on a second stream
        while the model runs on chunk k + 1."""
        ad = self.ad
        if not ranges:
            return {s.name: self._target(s, []) for s in specs}
        t0 = time.perf_counter()
        comp = ad.current_stream()
        first = ad.event()
        ad.record(first, self.s_h2d)
        copied = []
        for r0, r1 in ranges:
            for kw in keywords:
                ad.h2d(self.dev[kw][r0:r1], self.host[kw][r0:r1], self.s_h2d)
            ev = ad.event()
            ad.record(ev, self.s_h2d)
            copied.append(ev)
        marks, kept, chunks = [], [], {s.name: [] for s in specs}
        n = self.n_rows()
        for c, (r0, r1) in enumerate(ranges):
            ad.wait(comp, copied[c])
            m0 = ad.event()
            ad.record(m0, comp)
            result = call({kw: self.dev[kw][r0:r1] for kw in keywords}, r0, r1)
            ready = []
            for s in specs:  # before m1: another framework's work is ordered on comp first,
                value = result[s.name]  # and a strided output is made contiguous there
                self._check(s, [(r0, r1, value)])
                ready.append((s, ad.contiguous(ad.as_device(value))))
            m1 = ad.event()
            ad.record(m1, comp)
            ad.wait(self.s_d2h, m1)
            d0 = ad.event()
            ad.record(d0, self.s_d2h)
            for s, value in ready:
                out = self._out_buffer(s, value, n, first=c == 0)
                ad.d2h(out[r0:r1], value, self.s_d2h)
                kept.append(value)
                chunks[s.name].append((r0, r1, out[r0:r1]))
            d1 = ad.event()
            ad.record(d1, self.s_d2h)
            marks.append((m0, m1, d0, d1))
        ad.synchronize(self.s_d2h)
        wall = time.perf_counter() - t0
        self.timings.add("h2d", ad.elapsed_ms(first, copied[-1]) / 1e3)
        self.timings.add("model", sum(ad.elapsed_ms(a, b) for a, b, _, _ in marks) / 1e3)
        self.timings.add("d2h", sum(ad.elapsed_ms(a, b) for _, _, a, b in marks) / 1e3)
        self.timings.add("device", wall)
        targets = {}
        for s in specs:
            offset, _ = self._check(s, chunks[s.name])
            out = self._host_out[s.name]
            targets[s.name] = (out, offset) if self.land is None else (
                TileRows(out, self.row_of, self._spare(out.shape[1:], out.dtype)), offset)
        return targets

    def _run_jax(self, keywords, call, specs, ranges) -> dict:
        """JAX on a GPU: ``jax.device_put`` per chunk (asynchronous), the model, then the
        outputs viewed on the host (JAX owns streams and staging memory)."""
        jax = self.ad.jax
        t0 = t1 = time.perf_counter()
        pending = []
        for r0, r1 in ranges:
            kwargs = {kw: self.ad.put(self.host[kw][r0:r1]) for kw in keywords}
            if len(ranges) == 1:  # nothing to overlap: time the copy on its own
                jax.block_until_ready(kwargs)
                self.timings.add("h2d", time.perf_counter() - t0)
            t1 = time.perf_counter()
            result = call(kwargs, r0, r1)
            pending.append((r0, r1, result))
        chunks = {s.name: [] for s in specs}
        t2 = time.perf_counter()
        for r0, r1, result in pending:
            for s in specs:
                chunks[s.name].append((r0, r1, np.ascontiguousarray(
                    self.ad.host_view(result[s.name], f"output {s.name!r}"))))
        t3 = time.perf_counter()
        if len(ranges) == 1:
            self.timings.add("model", t2 - t1)
            self.timings.add("d2h", t3 - t2)  # includes waiting for the model (asynchronous)
        self.timings.add("device", t3 - t0)
        return chunks
