"""Fortran namelists (NEMO's ``namelist_cfg``, Eophis' ``earth_namelist``), read without f90nml.

Eophis scripts read the model's time step and run length from the model's namelist
(``FortranNamelist(path).get('rn_Dt', 'nn_itend', 'nn_it000')``). This reader covers what such
files hold: ``&group ... /`` groups (``&end`` also closes one), ``key = value`` assignments with
``!`` comments, several per line or one over several lines, strings in single or double quotes
(doubled quotes escape), integers, reals (``1200.``, ``1.e-3``, ``1.d0``), logicals (``.true.``,
``.false.``, ``T``, ``F``, ``.t.``), comma- or blank-separated arrays with repeat counts (``3*0.``),
and indexed keys (``ln_x(2) = ...``, stored under ``ln_x``). Names are case-insensitive.
Malformed content raises :class:`NamelistError` naming the file and the line.
"""
from __future__ import annotations

import re

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eEdD][+-]?\d+)?$")
_INT = re.compile(r"[+-]?\d+$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_%]*$")
_LOGICALS = {".true.": True, ".false.": False, ".t.": True, ".f.": False, "t": True, "f": False,
             "true": True, "false": False}


class NamelistError(ValueError):
    """Malformed namelist content; ``line`` is the 1-based line number."""

    def __init__(self, message: str, line: int, path: str | None = None):
        super().__init__(f"{path or 'namelist'}:{line}: {message}")
        self.line, self.path = line, path


def _tokens(text: str, path: str | None):
    """``(kind, value, line)`` tokens: 'str', 'word', '=', ',', '(', ')', '&', '/'."""
    line = 1
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "!":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "'\"":
            quote, start_line, buf = c, line, []
            i += 1
            while True:
                if i >= n:
                    raise NamelistError("unterminated string", start_line, path)
                if text[i] == quote:
                    if i + 1 < n and text[i + 1] == quote:
                        buf.append(quote)
                        i += 2
                        continue
                    i += 1
                    break
                if text[i] == "\n":
                    line += 1
                buf.append(text[i])
                i += 1
            yield "str", "".join(buf), start_line
        elif c == "&":  # '&name' opens a group, '&end' closes one: no blank after '&'
            start = i + 1
            i = start
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            if i == start:
                raise NamelistError("expected a group name right after '&'", line, path)
            yield "&", text[start:i], line
        elif c in "=,()/":
            yield c, c, line
            i += 1
        else:
            start = i
            while i < n and text[i] not in " \t\r\n!=,()&/'\"":
                i += 1
            yield "word", text[start:i], line


def _scalar(word: str, line: int, path: str | None):
    low = word.lower()
    if low in _LOGICALS:
        return _LOGICALS[low]
    if _INT.match(word):
        return int(word)
    if _NUMBER.match(word):
        return float(low.replace("d", "e"))
    raise NamelistError(f"not a value: {word!r} (strings need quotes)", line, path)


class FortranNamelist:
    """The groups of a Fortran namelist file: ``nml["namdom"]["rn_dt"]``, or Eophis'
    ``get('rn_Dt', 'nn_itend')`` (values in the order asked, whatever their group)."""

    def __init__(self, file_path: str | None = None, text: str | None = None):
        self.file_path = file_path
        if text is None:
            if file_path is None:
                raise ValueError("FortranNamelist: give a file path or text")
            with open(file_path) as fh:
                text = fh.read()
        self.groups: dict[str, dict] = {}
        self._parse(text)

    def _parse(self, text: str) -> None:
        path = self.file_path
        toks = list(_tokens(text, path))
        k = 0
        group = None
        values: dict = {}
        group_line = 0

        def peek(off=0):
            return toks[k + off] if k + off < len(toks) else (None, None, toks[-1][2] if toks else 1)

        while k < len(toks):
            kind, val, line = toks[k]
            if group is None:
                if kind != "&":
                    raise NamelistError(f"expected '&group' before {val!r}", line, path)
                if val.lower() == "end":
                    raise NamelistError("'&end' outside a group", line, path)
                group, values, group_line = val.lower(), {}, line
                if group in self.groups:
                    raise NamelistError(f"group &{group} appears twice", line, path)
                k += 1
                continue
            if kind == "/" or (kind == "&" and val.lower() == "end"):
                self.groups[group] = values
                group = None
                k += 1
                continue
            if kind == "&":
                raise NamelistError(f"group &{val} starts before &{group} is closed by '/'",
                                    line, path)
            if kind != "word" or not _NAME.match(val):
                raise NamelistError(f"expected 'name = value' in &{group}, got {val!r}", line, path)
            name = val.lower()
            k += 1
            if peek()[0] == "(":  # indexed: name(i) = ... ; keep the name
                while k < len(toks) and toks[k][0] != ")":
                    k += 1
                if k >= len(toks):
                    raise NamelistError(f"unclosed '(' after {val!r}", line, path)
                k += 1
            if peek()[0] != "=":
                raise NamelistError(f"expected '=' after {val!r}", line, path)
            k += 1
            items = []
            while k < len(toks):
                kind, v, vl = toks[k]
                if kind == ",":
                    k += 1
                    continue
                if kind in ("/", "&"):
                    break
                if kind == "word" and _NAME.match(v) and peek(1)[0] in ("=", "("):
                    break  # the next assignment
                if kind == "str":
                    items.append(v)
                elif kind == "word":
                    if "*" in v:
                        count, _, item = v.partition("*")
                        if not _INT.match(count) or int(count) < 1:
                            raise NamelistError(f"bad repeat count in {v!r}", vl, path)
                        if item == "":
                            if k + 1 < len(toks) and toks[k + 1][0] == "str":
                                items += [toks[k + 1][1]] * int(count)
                                k += 2
                                continue
                            raise NamelistError(f"nothing to repeat in {v!r}", vl, path)
                        items += [_scalar(item, vl, path)] * int(count)
                    else:
                        items.append(_scalar(v, vl, path))
                else:
                    raise NamelistError(f"unexpected {v!r} in the value of {name!r}", vl, path)
                k += 1
            if not items:
                raise NamelistError(f"no value for {name!r}", line, path)
            values[name] = items[0] if len(items) == 1 else items
        if group is not None:
            raise NamelistError(f"group &{group} is not closed by '/'", group_line, path)

    def __getitem__(self, group: str) -> dict:
        return self.groups[group.lower()]

    def __contains__(self, group: str) -> bool:
        return group.lower() in self.groups

    def get(self, *labels):
        """Values of ``labels`` (any group, case-insensitive), as a list in the order asked."""
        out = []
        for label in labels:
            key = str(label).lower()
            for values in self.groups.values():
                if key in values:
                    out.append(values[key])
                    break
            else:
                raise KeyError(f"{label!r} is not in {self.file_path or 'the namelist'} (groups: "
                               f"{', '.join(sorted(self.groups))})")
        return out
