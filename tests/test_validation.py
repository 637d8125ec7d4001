"""Bad input gets a ValueError/TypeError naming the argument and what is wrong."""
from __future__ import annotations

import numpy as np
import pytest

import eophis_hpc as eh
from eophis_hpc import kernels
from eophis_hpc.transport.local import gather_local, scatter_local

from strategies import BACKENDS

G = eh.Grid(nx=12, ny=10, east_west="cyclic", north="fold", pivot="T", point="T")


@pytest.mark.parametrize("kwargs,match", [
    (dict(nx=0, ny=5), "nx must be a positive integer"),
    (dict(nx=5, ny=2.5), "ny must be a positive integer"),
    (dict(nx=5, ny=5, east_west="periodic"), "east_west='periodic' is not one of"),
    (dict(nx=5, ny=5, north="NFold"), "north='NFold' is not one of"),
    (dict(nx=5, ny=5, south="fold"), "south='fold' is not supported"),
    (dict(nx=5, ny=5, pivot="U"), "pivot='U'"),
    (dict(nx=5, ny=5, point="W"), "point='W'"),
])
def test_bad_grid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        eh.Grid(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown grid 'ORCA3'"):
        eh.Grid.preset("ORCA3")


@pytest.mark.parametrize("halo,match", [(12, "halo=12 is wider than the grid allows"),
                                        (-1, "non-negative integer"), (1.5, "non-negative")])
def test_bad_halo(halo, match):
    dec = eh.Decomposition.blocks(G, 2, 2)
    with pytest.raises(ValueError, match=match):
        eh.Plan(G, dec, dec, halo=halo)


def test_cyclic_halo_of_nx_is_refused_but_nx_minus_one_works():
    g = eh.Grid(nx=6, ny=40, east_west="cyclic")
    dec = eh.Decomposition.blocks(g, 2, 1)
    with pytest.raises(ValueError, match="halo=6"):
        eh.Plan(g, dec, dec, halo=6)
    eh.Plan(g, dec, dec, halo=5)


def test_fold_halo_limit_depends_on_point():
    g = eh.Grid(nx=8, ny=5, east_west="cyclic", north="fold", pivot="T", point="V")  # a = 2
    dec = eh.Decomposition.blocks(g, 1, 1)
    eh.Plan(g, dec, dec, halo=3)
    with pytest.raises(ValueError, match="fold past the southern edge"):
        eh.Plan(g, dec, dec, halo=4)


@pytest.mark.parametrize("boxes,holes,match", [
    ([(0, 10, 0, 6), (0, 10, 5, 12)], False, "overlap"),
    ([(0, 10, 0, 6)], False, "uncovered"),
    ([(0, 11, 0, 12)], False, "outside"),
    ([(0, 10, 6, 6)], True, "empty"),
    ([(0, 10, 0)], False, "expected 4 values"),
    ([], False, "no boxes"),
])
def test_bad_boxes(boxes, holes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        eh.Decomposition.from_boxes(G, boxes, holes=holes)


def test_bad_blocks_and_auto():
    with pytest.raises(ValueError, match="px=13 is more than the 12 points"):
        eh.Decomposition.blocks(G, 13, 1)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        eh.Decomposition.auto(G, 0)
    with pytest.raises(ValueError, match="mask has shape"):
        eh.Decomposition.nemo(G, 2, 2, mask=np.ones((12, 10)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_pieces(backend):
    src = eh.Decomposition.blocks(G, 2, 1)
    plan = eh.Plan(G, src, eh.Decomposition.auto(G, 1), halo=1)
    good = [np.zeros((2, 10, 6)), np.zeros((2, 10, 6))]
    scatter_local(plan, good, backend=backend)
    bad_cases = [
        (good[:1], ValueError, "expected a list of 2 arrays"),
        ([good[0], np.zeros((2, 10, 5))], ValueError, r"pieces\[1\]: shape \(2, 10, 5\)"),
        ([good[0], np.zeros((2, 10, 6), dtype=np.int32)], TypeError, r"pieces\[1\]: dtype"),
        ([good[0], np.zeros((2, 10, 6), dtype=np.float32)], ValueError, "differ from pieces"),
        ([good[0], np.zeros((2, 10, 12))[:, :, ::2]], ValueError, "C-contiguous"),
        ([good[0], np.zeros((10, 6))], ValueError, "3-D array"),
        ([good[0], [[0.0]]], TypeError, "numpy.ndarray"),
    ]
    for pieces, exc, match in bad_cases:
        with pytest.raises(exc, match=match):
            scatter_local(plan, pieces, backend=backend)
    tiles = scatter_local(plan, good, backend=backend)
    with pytest.raises(ValueError, match=r"outputs\[0\]: expected shape"):
        gather_local(plan, [np.zeros((2, 3, 3))], backend=backend)
    with pytest.raises(ValueError, match="expected 1 arrays"):
        gather_local(plan, tiles + tiles, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_refuse_runs_out_of_bounds(backend):
    kern = kernels.get(backend)
    src = np.zeros((2, 4, 5))
    with pytest.raises(ValueError, match="run 1 .* does not fit an array of 4x5"):
        kern.pack(src, np.array([[0, 0, 1, 1], [3, 3, 2, 2]], dtype=np.int64), np.zeros(10))
    with pytest.raises(ValueError, match="the runs hold 2 values, the buffer has 3"):
        kern.pack(src, np.array([[0, 0, 1, 1]], dtype=np.int64), np.zeros(3))
    with pytest.raises(ValueError, match="does not fit"):
        kern.unpack(np.zeros(2), src, np.array([[-1, 0, 1, 1, 0]], dtype=np.int64), 1.0)
    with pytest.raises(ValueError, match="does not fit"):
        kern.fill(src, np.array([[0, 0, 5, 1]], dtype=np.int64), 0.0)


def test_backend_registry(monkeypatch):
    assert kernels.get("numpy").name == "numpy"
    with pytest.raises(ValueError, match="'fortran' is not a kernel backend"):
        kernels.get("fortran")
    monkeypatch.setenv(kernels.ENV_VAR, "numba")
    assert kernels.get().name == "numba"
    monkeypatch.setenv(kernels.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="EOPHIS_HPC_BACKEND='bogus'"):
        kernels.get()
    monkeypatch.delenv(kernels.ENV_VAR)
    assert kernels.get().name == "cython"  # the compiled kernels are built by pip install
    assert kernels.available() == {"cython": "ok", "numba": "ok", "numpy": "ok"}
