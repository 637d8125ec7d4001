"""The OASIS3-MCT ``namcouple``: written in preproduction from the tunnels, read back and checked
in production (pure: files and text only).

The format is the one Eophis 1.0.2 writes (``coupling/namcouple.py``): a ``$NFIELDS`` /
``$RUNTIME`` / ``$NLOGPRT`` header, then in ``$STRINGS`` one block per field, grouped under a
``# ======= Tunnel LABEL =======`` comment::

    # Earth -- sst --> Models
    E_OUT_0 M_IN_0 1 3600 0 rst.nc EXPORTED
    720 603 720 603 demo demo LAG=0
    R 0 R 0

Line 1: source and target names, an unused index (1), the coupling period in seconds, the number
of transformations (0), the restart file, the field status; line 2: source and target grid sizes
and names, the lag; line 3: the periodicity of both grids (``R 0``: regional, no overlap).
Fields sent by the model (the tunnel's inputs) go from ``E_OUT_n`` to ``M_IN_n``, fields sent back
from ``M_OUT_n`` to ``E_IN_n``; ``n`` counts the inputs (resp. outputs) of all the tunnels in
registration order, and user aliases replace the names without changing the count. ``$RUNTIME``
is ``int(total time * 1.01)``; static fields use the run length as their period, so OASIS moves
them once, at date 0.

An existing ``namcouple`` is kept as ``namcouple_ref`` and completed (its fields and header are
kept; ours are added or replaced); ``namcouple_ref`` is never written over.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence

STATIC = -1
STATIC_RUNTIME_LIMIT = 10**8  # Eophis 1.0.2 (_check_runtime): larger static periods crash OASIS
HEADER = "############# MODIFIED BY EOPHIS (eophis_hpc) ###############"
STATUSES = ("EXPORTED", "EXPOUT", "IGNORED", "IGNOUT", "INPUT", "OUTPUT", "AUXILARY")
SECTIONS = ("$NFIELDS", "$RUNTIME", "$NLOGPRT", "$STRINGS")
SKELETON = ["$NFIELDS", "0", "$END", "############",
            "$RUNTIME", "0", "$END", "############",
            "$NLOGPRT", "1 0", "$END", "############",
            "$STRINGS", "#", "$END"]


class NamcoupleError(ValueError):
    """A malformed namcouple (``line`` is the 1-based line number, when there is one) or a
    namcouple that does not match the tunnels."""

    def __init__(self, message: str, line: int | None = None, path: str | None = None,
                 field: str | None = None):
        where = f"{path or 'namcouple'}:{line}: " if line is not None else \
            (f"{path}: " if path else "")
        super().__init__(where + message)
        self.line, self.path, self.field = line, path, field


# ---------------------------------------------------------------------- what the tunnels need
@dataclass(frozen=True)
class CouplingField:
    """One namcouple block: field ``name`` of tunnel ``tunnel``, ``direction`` "in" (model ->
    workers) or "out", period ``freq`` in seconds (``STATIC`` = once), grid ``grid`` of
    ``nx x ny`` points, the names on the model side (``geo_alias``) and on ours
    (``py_alias``), and OASIS' ``LAG`` in seconds (outputs of a lagged exchange: ``lag``
    occurrences times the period; OASIS then hands the model at date ``t`` what the workers put
    at ``t - LAG``, the first ones from its coupling restart file)."""

    tunnel: str
    name: str
    direction: str
    freq: int
    nx: int
    ny: int
    grid: str
    geo_alias: str
    py_alias: str
    lag: int = 0

    @property
    def source(self) -> str:
        return self.geo_alias if self.direction == "in" else self.py_alias

    @property
    def target(self) -> str:
        return self.py_alias if self.direction == "in" else self.geo_alias

    def label(self) -> str:
        return f"{self.name!r} of tunnel {self.tunnel} ({self.source} -> {self.target})"


def coupling_fields(tunnels: Sequence[dict]) -> list[CouplingField]:
    """The blocks of a list of tunnels given as Eophis-style dictionaries, aliases numbered as
    Eophis does.

    Each tunnel: ``label``; ``grids`` ``{name: {"npts": (nx, ny), ...}}``; ``exchs`` ``[{"freq":
    seconds or STATIC, "grd": name, "in": [...], "out": [...], "lag": seconds (optional, outputs
    only)}]``; optional ``geo_aliases`` and ``py_aliases`` ``{field: alias}``."""
    out: list[CouplingField] = []
    n_in = n_out = 0
    for k, tnl in enumerate(tunnels):
        label = str(tnl.get("label", f"tunnel{k}"))
        grids = tnl.get("grids") or {}
        geo = dict(tnl.get("geo_aliases") or {})
        py = dict(tnl.get("py_aliases") or {})
        for x, ex in enumerate(tnl.get("exchs") or []):
            grd = ex.get("grd")
            if grd not in grids:
                raise ValueError(f"tunnel {label}: exchange {x} uses grid {grd!r}, not one of "
                                 f"{sorted(grids)}")
            nx, ny = (int(v) for v in grids[grd]["npts"])
            freq = _period(ex.get("freq"), f"tunnel {label}: exchange {x}")
            lag = int(ex.get("lag") or 0)
            for name in ex.get("in") or ():
                out.append(CouplingField(label, name, "in", freq, nx, ny, str(grd),
                                         geo.get(name, f"E_OUT_{n_in}"),
                                         py.get(name, f"M_IN_{n_in}")))
                n_in += 1
            for name in ex.get("out") or ():
                out.append(CouplingField(label, name, "out", freq, nx, ny, str(grd),
                                         geo.get(name, f"E_IN_{n_out}"),
                                         py.get(name, f"M_OUT_{n_out}"), lag))
                n_out += 1
    seen: dict = {}
    for f in out:
        for alias in (f.geo_alias, f.py_alias):
            if alias in seen and seen[alias] != f:
                raise ValueError(f"namcouple: alias {alias!r} is used by field {f.label()} and by "
                                 f"{seen[alias].label()}")
            seen[alias] = f
    return out


def _period(freq, where: str) -> int:
    if freq is None:
        raise ValueError(f"{where}: no frequency")
    if freq == STATIC:
        return STATIC
    value = Fraction(str(freq))
    if value <= 0 or value.denominator != 1:
        raise ValueError(f"{where}: the coupling period must be a positive whole number of "
                         f"seconds (or Freqs.STATIC), got {freq!r}")
    return int(value)


def tunnel_dict(tunnel, label: str | None = None, geo_aliases: dict | None = None,
                py_aliases: dict | None = None) -> dict:
    """An :class:`eophis_hpc.Tunnel` as the dictionary :func:`coupling_fields` reads: one grid
    (named after the grid, or ``NXxNY``), periods in seconds (``every`` steps times ``dt``), the
    outputs' LAG in seconds (``lag`` occurrences times the period)."""
    grid = tunnel.grid
    gname = grid.name or f"g{grid.nx}x{grid.ny}"
    dt = tunnel.schedule.dt
    exchs = []
    for x, ex in enumerate(tunnel.exchanges):
        if ex.static:
            freq = STATIC
        elif ex.freq is not None:
            freq = ex.freq
        elif dt is None:
            raise ValueError(f"namcouple: exchange {x} ({', '.join(ex.inputs)}) runs every "
                             f"{ex.every} steps: the tunnel needs dt (seconds) to give OASIS a "
                             "period")
        else:
            freq = ex.every * dt
        lag = 0 if ex.static else _period(ex.lag * Fraction(str(freq)), f"exchange {x}: lag") \
            if ex.lag else 0
        exchs.append({"freq": freq, "grd": gname, "in": list(ex.inputs), "out": list(ex.outputs),
                      "lag": lag})
    return {"label": label or gname, "grids": {gname: {"npts": (grid.nx, grid.ny)}},
            "exchs": exchs, "geo_aliases": geo_aliases or {}, "py_aliases": py_aliases or {}}


# ---------------------------------------------------------------------- parsing
@dataclass
class Block:
    """One field of ``$STRINGS``: its header tokens and body lines, with 1-based line numbers."""

    line: int
    source: str
    target: str
    freq: int
    ntrans: int
    restart: str
    status: str
    body: list  # [(line_number, text)]

    def grid_line(self):
        """``(line, (nx_s, ny_s, nx_t, ny_t), (grid_s, grid_t), options)`` of an EXPORTED field."""
        if not self.body:
            return None
        line, text = self.body[0]
        tok = text.split()
        return line, tuple(int(v) for v in tok[:4]), tuple(tok[4:6]), tok[6:]

    def periodicity(self):
        if len(self.body) < 2:
            return None
        line, text = self.body[1]
        return line, text.split()


class Namcouple:
    """A parsed namcouple: ``lines`` (without newlines), ``nfields``, ``runtime``, ``blocks``;
    ``sections[name] = (line of $NAME, line of its $END)`` (1-based)."""

    def __init__(self, text: str, path: str | None = None):
        self.path = path
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()
        self.sections: dict[str, tuple[int, int]] = {}
        self.blocks: list[Block] = []
        self._parse()

    def _err(self, msg: str, line: int | None) -> NamcoupleError:
        return NamcoupleError(msg, line, self.path)

    def _parse(self) -> None:
        lines = self.lines
        k = 0
        while k < len(lines):
            text = lines[k].strip()
            if not text or text.startswith("#"):
                k += 1
                continue
            key = text.split()[0]
            if not re.fullmatch(r"\$[A-Z]+", key) or key == "$END":
                raise self._err(f"expected a $SECTION keyword ({', '.join(SECTIONS)}), got "
                                f"{text!r}", k + 1)
            if key in self.sections:
                raise self._err(f"section {key} appears twice (first at line "
                                f"{self.sections[key][0]})", k + 1)
            end = k + 1
            while end < len(lines) and lines[end].split()[:1] != ["$END"]:
                if lines[end].strip().startswith("$") and lines[end].split()[0] != "$END":
                    raise self._err(f"section {key} (line {k + 1}) is not closed by $END before "
                                    f"{lines[end].split()[0]}", end + 1)
                end += 1
            if end >= len(lines):
                raise self._err(f"section {key} is not closed by $END", k + 1)
            self.sections[key] = (k + 1, end + 1)
            body = [(n + 1, lines[n]) for n in range(k + 1, end)]
            for n, t in body:
                if not t.strip():
                    raise self._err("blank line inside a section (OASIS3-MCT does not allow "
                                    "them)", n)
            if key == "$STRINGS":
                self._parse_strings(body)
            elif key in ("$NFIELDS", "$RUNTIME"):
                values = [(n, t) for n, t in body if not t.strip().startswith("#")]
                if len(values) != 1 or len(values[0][1].split()) != 1:
                    raise self._err(f"{key} must hold one integer", (values[0][0] if values
                                                                     else k + 1))
                n, t = values[0]
                try:
                    value = int(t.split()[0])
                except ValueError:
                    raise self._err(f"{key}: expected an integer, got {t.strip()!r}", n) from None
                if value < 0:
                    raise self._err(f"{key}: expected a non-negative integer, got {value}", n)
                setattr(self, key[1:].lower(), value)
                self._value_lines = getattr(self, "_value_lines", {})
                self._value_lines[key] = n
            elif key == "$NLOGPRT":
                for n, t in body:
                    if t.strip().startswith("#"):
                        continue
                    if not all(_is_int(v) for v in t.split()):
                        raise self._err(f"$NLOGPRT: expected integers, got {t.strip()!r}", n)
            k = end + 1
        for key in ("$NFIELDS", "$RUNTIME", "$STRINGS"):
            if key not in self.sections:
                raise self._err(f"no {key} section", None)
        if self.nfields != len(self.blocks):
            raise self._err(f"$NFIELDS says {self.nfields} fields, $STRINGS holds "
                            f"{len(self.blocks)}", self._value_lines["$NFIELDS"])

    def _parse_strings(self, body) -> None:
        current = None
        for n, text in body:
            s = text.strip()
            if s.startswith("#"):
                continue
            tok = s.split()
            if len(tok) >= 7 and tok[6] in STATUSES:
                for idx, what in ((2, "field index"), (3, "coupling period"),
                                  (4, "number of transformations")):
                    if not _is_int(tok[idx]):
                        raise self._err(f"field {tok[0]} -> {tok[1]}: the {what} must be an "
                                        f"integer, got {tok[idx]!r}", n)
                current = Block(n, tok[0], tok[1], int(tok[3]), int(tok[4]), tok[5], tok[6], [])
                self.blocks.append(current)
                continue
            if current is None:
                raise self._err("expected a field line 'SOURCE TARGET 1 PERIOD NTRANS RESTART "
                                f"STATUS', got {s!r}", n)
            current.body.append((n, text))
        for b in self.blocks:
            if b.status not in ("EXPORTED", "EXPOUT"):
                continue
            if len(b.body) < 2:
                raise self._err(f"field {b.source} -> {b.target}: an {b.status} field needs a "
                                "grid line and a periodicity line", b.line)
            n, text = b.body[0]
            tok = text.split()
            if len(tok) < 6 or not all(_is_int(v) for v in tok[:4]):
                raise self._err(f"field {b.source} -> {b.target}: expected 'NX_SRC NY_SRC NX_TGT "
                                f"NY_TGT SRC_GRID TGT_GRID [LAG=..]', got {text.strip()!r}", n)
            n, text = b.body[1]
            tok = text.split()
            if (len(tok) != 4 or tok[0] not in ("P", "R") or tok[2] not in ("P", "R")
                    or not _is_int(tok[1]) or not _is_int(tok[3])):
                raise self._err(f"field {b.source} -> {b.target}: expected a periodicity line "
                                f"'P|R N P|R N', got {text.strip()!r}", n)
            if b.ntrans < 0:
                raise self._err(f"field {b.source} -> {b.target}: negative number of "
                                "transformations", b.line)

    def block(self, source: str, target: str) -> Block | None:
        for b in self.blocks:
            if b.source == source and b.target == target:
                return b
        return None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_namcouple(path: str = "namcouple") -> Namcouple:
    """Parse a namcouple file; :class:`NamcoupleError` with the line number on bad content."""
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        raise NamcoupleError("no such file: run the preproduction step first (it writes the "
                             "namcouple)", None, path) from None
    return Namcouple(text, path)


# ---------------------------------------------------------------------- writing
def render_fields(fields: Sequence[CouplingField], runtime: int) -> list[str]:
    """The ``$STRINGS`` lines of ``fields`` (static periods replaced by ``runtime``)."""
    lines: list[str] = []
    tunnel = None
    for f in fields:
        if f.tunnel != tunnel:
            if tunnel is not None:
                lines.append("#")
            lines.append(f"# ======= Tunnel {f.tunnel} =======")
            tunnel = f.tunnel
        arrow = f"# Earth -- {f.name} --> Models" if f.direction == "in" else \
            f"# Earth <-- {f.name} -- Models"
        freq = runtime if f.freq == STATIC else f.freq
        lines += [arrow,
                  f"{f.source} {f.target} 1 {freq} 0 rst.nc EXPORTED",
                  f"{f.nx} {f.ny} {f.nx} {f.ny} {f.grid} {f.grid} LAG={'%+d' % f.lag if f.lag else 0}",
                  "R 0 R 0"]
    if fields:
        lines.append("#")
    return lines


def complete(base: Namcouple | None, fields: Sequence[CouplingField], total_time: int) -> str:
    """The text of ``base`` (or a new namcouple) completed with ``fields``.

    Blocks of ``base`` with the same source and target as one of ``fields`` are replaced (so a
    second preproduction does not duplicate them); ``$NFIELDS`` counts the blocks;
    ``$RUNTIME`` becomes ``max(base's, total_time)``; static periods are the final runtime."""
    lines = list(base.lines) if base is not None else list(SKELETON)
    if base is None:
        base = Namcouple("\n".join(lines))
    ours = {(f.source, f.target) for f in fields}
    labels = {f.tunnel for f in fields}
    drop = set()
    for b in base.blocks:
        if (b.source, b.target) in ours:
            last = b.body[-1][0] if b.body else b.line
            drop.update(range(b.line, last + 1))
            prev = b.line - 1  # the "# Earth -- x --> Models" comment written with it
            if prev >= 1 and lines[prev - 1].lstrip().startswith("# Earth"):
                drop.add(prev)
    for n, text in enumerate(lines, start=1):
        s = text.strip()
        if s == HEADER or any(s == f"# ======= Tunnel {lab} =======" for lab in labels):
            drop.add(n)
    kept_blocks = [b for b in base.blocks if (b.source, b.target) not in ours]
    runtime = max(int(getattr(base, "runtime", 0)), int(total_time))
    if runtime >= STATIC_RUNTIME_LIMIT and any(f.freq == STATIC for f in fields):
        raise ValueError(f"namcouple: a run of {runtime} s with static fields: OASIS3-MCT fails "
                         f"when a coupling period reaches {STATIC_RUNTIME_LIMIT:.0e} s (Eophis "
                         "1.0.2 refuses it too); run shorter segments or drop the static "
                         "exchanges")
    s_end = base.sections["$STRINGS"][1]
    out = [HEADER]
    for n, text in enumerate(lines, start=1):
        if n in drop:
            continue
        if n == s_end and fields:
            if out[-1].strip() == "#" and out[-2].strip() == "$STRINGS":
                out.pop()  # the skeleton's placeholder comment: our blocks take its place
            out += render_fields(fields, runtime)
        out.append(text)
    out[_value_line(out, "$NFIELDS")] = str(len(kept_blocks) + len(fields))
    out[_value_line(out, "$RUNTIME")] = str(runtime)
    tidy: list[str] = []
    for text in out:  # removals may leave two "#" separators in a row
        if tidy and text.strip() == "#" and tidy[-1].strip() == "#":
            continue
        tidy.append(text)
    return "\n".join(tidy) + "\n"


def _value_line(lines: list[str], key: str) -> int:
    for k, text in enumerate(lines):
        if text.split()[:1] == [key]:
            k += 1
            while lines[k].strip().startswith("#"):
                k += 1
            return k
    raise NamcoupleError(f"no {key} section", None)


def runtime_of(simulation_time) -> int:
    """Eophis' ``$RUNTIME`` for a run of ``simulation_time`` seconds: ``int(t * 1.01)``."""
    return int(simulation_time * 1.01)


def write_namcouple(fields: Sequence[CouplingField], simulation_time, directory: str = ".",
                    name: str = "namcouple", ref_name: str = "namcouple_ref") -> str:
    """Write ``directory/namcouple`` for ``fields`` and a run of ``simulation_time`` seconds.

    An existing namcouple (not written by us) is first kept as ``namcouple_ref``; the new file is
    ``namcouple_ref`` (if any) completed with ``fields``. Returns the path written."""
    out_path = os.path.join(directory, name)
    ref_path = os.path.join(directory, ref_name)
    base = None
    if os.path.isfile(ref_path):
        base = read_namcouple(ref_path)
    elif os.path.isfile(out_path):
        base = read_namcouple(out_path)
        if HEADER not in base.lines:
            shutil.copyfile(out_path, ref_path)
    text = complete(base, fields, runtime_of(simulation_time))
    Namcouple(text, out_path)  # what we write must read back
    tmp = out_path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, out_path)
    return out_path


# ---------------------------------------------------------------------- production check
def check_namcouple(doc: Namcouple, fields: Iterable[CouplingField]) -> None:
    """Raise :class:`NamcoupleError` naming the first field of ``fields`` whose block is missing
    or differs (period, grid sizes or names, status, lag, transformations, periodicity)."""
    for f in fields:
        b = doc.block(f.source, f.target)
        if b is None:
            others = [x for x in doc.blocks if f.py_alias in (x.source, x.target)
                      or f.geo_alias in (x.source, x.target)]
            hint = (f"; the namcouple has {others[0].source} -> {others[0].target} at line "
                    f"{others[0].line}") if others else ""
            raise NamcoupleError(f"field {f.label()} is not in the namcouple{hint}: run the "
                                 "preproduction step again", None, doc.path, f.name)
        want_freq = doc.runtime if f.freq == STATIC else f.freq
        problems = []
        if b.status != "EXPORTED":
            problems.append((b.line, f"status {b.status}, expected EXPORTED"))
        if b.freq != want_freq:
            what = "the run length ($RUNTIME) for a static field" if f.freq == STATIC else \
                f"{want_freq} s"
            problems.append((b.line, f"period {b.freq} s, expected {what}"))
        if b.ntrans != 0:
            problems.append((b.line, f"{b.ntrans} transformations, expected 0"))
        gl = b.grid_line()
        if gl is not None:
            line, sizes, names, options = gl
            if sizes != (f.nx, f.ny, f.nx, f.ny):
                problems.append((line, f"grid sizes {' '.join(map(str, sizes))}, expected "
                                       f"{f.nx} {f.ny} {f.nx} {f.ny}"))
            if names != (f.grid, f.grid):
                problems.append((line, f"grids {' '.join(names)}, expected {f.grid} {f.grid}"))
            lags = [o for o in options if o.upper().startswith("LAG=")] or ["LAG=0"]
            seconds = lags[0][4:]
            if not seconds.lstrip("+-").isdigit() or int(seconds) != f.lag:
                want = "%+d" % f.lag if f.lag else 0
                problems.append((line, f"{lags[0]}, expected LAG={want}"))
        per = b.periodicity()
        if per is not None and per[1] != ["R", "0", "R", "0"]:
            problems.append((per[0], f"periodicity {' '.join(per[1])}, expected R 0 R 0"))
        if problems:
            line, what = problems[0]
            raise NamcoupleError(f"field {f.label()} differs from the tunnels: {what}", line,
                                 doc.path, f.name)
