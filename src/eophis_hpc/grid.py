"""Global grids and their boundary conditions (layer 1, pure).

A :class:`Grid` says how many inner points there are and what a point outside them is: a fill
value (``closed``), a periodic copy (``cyclic``) or NEMO's north fold (``fold``). The exact
semantics are those of docs/architecture.md; :mod:`eophis_hpc.reference` applies them to a global array.
"""
from __future__ import annotations

from dataclasses import dataclass

EAST_WEST = ("closed", "cyclic")
SOUTH = ("closed", "cyclic")
NORTH = ("closed", "cyclic", "fold")
PIVOTS = ("T", "F")
POINTS = ("T", "U", "V", "F")

# (a, b) of the north fold: row ny + k, column i takes F[ny - 1 - a - k, (nx - 1 - i + b) mod nx].
FOLD_SHIFTS = {
    "T": {"T": (1, 1), "U": (1, 0), "V": (2, 1), "F": (2, 0)},
    "F": {"T": (0, 0), "U": (0, -1), "V": (1, 0), "F": (1, -1)},
}

# name: (nx, ny, east_west, south, north, pivot)
PRESETS = {
    "ORCA2": (180, 148, "cyclic", "closed", "fold", "T"),
    "ORCA1": (360, 331, "cyclic", "closed", "fold", "F"),
    "eORCA05": (720, 603, "cyclic", "closed", "fold", "F"),
    "eORCA025": (1440, 1206, "cyclic", "closed", "fold", "T"),
    "eORCA12": (4322, 3606, "cyclic", "closed", "fold", "T"),
    "DINO": (62, 199, "closed", "closed", "closed", "T"),
    # Eophis' "demo" domain: 720x603, closed everywhere.
    "demo": (720, 603, "closed", "closed", "closed", "T"),
}


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"Grid: {name}={value!r} is not one of {', '.join(map(repr, allowed))}")
    return value


@dataclass(frozen=True)
class Grid:
    """A global 2-D grid of ``ny x nx`` inner points with the boundary conditions of its four edges.

    ``pivot`` and ``point`` only matter for ``north="fold"``: they select the fold shifts (a, b).
    """

    nx: int
    ny: int
    east_west: str = "closed"
    south: str = "closed"
    north: str = "closed"
    pivot: str = "T"
    point: str = "T"
    name: str = ""

    def __post_init__(self):
        for attr in ("nx", "ny"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Grid: {attr} must be a positive integer, got {value!r}")
        _choice("east_west", self.east_west, EAST_WEST)
        if self.south == "fold":
            raise ValueError("Grid: south='fold' is not supported: NEMO's fold is at the north "
                             "(last j); use north='fold'")
        _choice("south", self.south, SOUTH)
        _choice("north", self.north, NORTH)
        _choice("pivot", self.pivot, PIVOTS)
        _choice("point", self.point, POINTS)

    @classmethod
    def preset(cls, name: str, point: str = "T") -> "Grid":
        """A known model grid (ORCA2, ORCA1, eORCA05, eORCA025, eORCA12, DINO, demo)."""
        key = {k.lower(): k for k in PRESETS}.get(str(name).lower())
        if key is None:
            raise ValueError(f"Grid.preset: unknown grid {name!r}; known: {', '.join(PRESETS)}")
        nx, ny, ew, south, north, pivot = PRESETS[key]
        return cls(nx, ny, ew, south, north, pivot, point, name=key)

    def with_point(self, point: str) -> "Grid":
        """The same grid for another point type (T, U, V, F): only the fold shifts change."""
        return Grid(self.nx, self.ny, self.east_west, self.south, self.north, self.pivot, point,
                    self.name)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def fold_shift(self) -> tuple[int, int]:
        """(a, b) of the fold formula (docs/architecture.md) for this pivot and point type."""
        return FOLD_SHIFTS[self.pivot][self.point]

    def max_halo(self) -> int | None:
        """Largest halo whose cells all have a well-defined, single source (None: unbounded)."""
        limits = []
        if self.east_west == "cyclic":
            limits.append(self.nx - 1)
        if self.south == "cyclic" or self.north == "cyclic":
            limits.append(self.ny - 1)
        if self.north == "fold":
            limits.append(self.ny - self.fold_shift[0])
        return min(limits) if limits else None

    def check_halo(self, halo, where: str = "halo") -> int:
        """Validate a halo width for this grid and return it as an int."""
        if isinstance(halo, bool) or not isinstance(halo, int) or halo < 0:
            raise ValueError(f"{where} must be a non-negative integer, got {halo!r}")
        limit = self.max_halo()
        if limit is not None and halo > limit:
            raise ValueError(
                f"{where}={halo} is wider than the grid allows ({limit} for nx={self.nx}, "
                f"ny={self.ny}, east_west={self.east_west!r}, north={self.north!r}): a halo cell "
                "would wrap onto itself or fold past the southern edge")
        return halo

    def describe(self) -> str:
        label = f"{self.name} " if self.name else ""
        fold = f", {self.pivot}-pivot {self.point}-point" if self.north == "fold" else ""
        return (f"{label}{self.nx}x{self.ny} (east-west {self.east_west}, south {self.south}, "
                f"north {self.north}{fold})")

    def to_dict(self) -> dict:
        return {"nx": self.nx, "ny": self.ny, "east_west": self.east_west, "south": self.south,
                "north": self.north, "pivot": self.pivot, "point": self.point, "name": self.name}

    @classmethod
    def from_dict(cls, data: dict) -> "Grid":
        return cls(**data)
