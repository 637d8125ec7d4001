"""The block-to-block copy kernel (what the ``shm`` strategy copies with) on every backend, bit
for bit against an element-by-element oracle, streaming stores included."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eophis_hpc import kernels

from strategies import BACKENDS

DTYPES = (np.float32, np.float64)


def oracle(src, dst, blocks, sign):
    """``dst`` after the copy, one element at a time: a folded block lands reversed in j and i,
    multiplied by ``sign`` in the source's dtype."""
    out = dst.copy()
    s = src.dtype.type(sign)
    for sj, si, dj, di, nj, ni, fold in blocks.tolist():
        for k in range(src.shape[0]):
            for j in range(nj):
                for c in range(ni):
                    v = src[k, sj + j, si + c]
                    if fold:
                        out[k, dj + nj - 1 - j, di + ni - 1 - c] = s * v
                    else:
                        out[k, dj + j, di + c] = v
    return out


@st.composite
def copy_cases(draw):
    nz = draw(st.integers(1, 3))
    sy, sx = draw(st.integers(1, 9)), draw(st.integers(1, 80))
    dy, dx = draw(st.integers(1, 9)), draw(st.integers(1, 80))
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        nj = draw(st.integers(0, min(sy, dy)))
        ni = draw(st.integers(0, min(sx, dx)))
        rows.append((draw(st.integers(0, sy - nj)), draw(st.integers(0, sx - ni)),
                     draw(st.integers(0, dy - nj)), draw(st.integers(0, dx - ni)), nj, ni,
                     draw(st.integers(0, 1))))
    # blocks writing the same destination cell would make the order matter: keep them apart
    seen, blocks = np.zeros((dy, dx), bool), []
    for sj, si, dj, di, nj, ni, fold in rows:
        if not seen[dj:dj + nj, di:di + ni].any():
            seen[dj:dj + nj, di:di + ni] = True
            blocks.append((sj, si, dj, di, nj, ni, fold))
    blocks = np.array(blocks, dtype=np.int64).reshape(-1, 7)
    return (nz, sy, sx), (nz, dy, dx), blocks


@settings(max_examples=60, deadline=None)
@given(case=copy_cases(), backend=st.sampled_from(BACKENDS),
       src_dtype=st.sampled_from(DTYPES), dst_dtype=st.sampled_from(DTYPES),
       sign=st.sampled_from((1.0, -1.0)), stream=st.booleans(), seed=st.integers(0, 2**31))
def test_copy_matches_oracle(case, backend, src_dtype, dst_dtype, sign, stream, seed):
    src_shape, dst_shape, blocks = case
    rng = np.random.default_rng(seed)
    src = rng.standard_normal(src_shape).astype(src_dtype)
    dst = rng.standard_normal(dst_shape).astype(dst_dtype)
    want = oracle(src, dst, blocks, sign)
    kern = kernels.get(backend)
    restore = None
    if backend == "cython":  # stream every row, however short, so small cases take that path
        from eophis_hpc._ext import _copy_kernels
        restore = _copy_kernels.set_stream_bytes(0, 0)
    try:
        kern.copy(src, dst, blocks, sign, stream)
    finally:
        if restore is not None:
            _copy_kernels.set_stream_bytes(*restore)
    np.testing.assert_array_equal(dst, want)


def test_copy_streams_unaligned_rows_of_a_slab():
    """A slab of a halo-extended tile (row stride not a multiple of a cache line) copied with
    streaming stores equals the plain copy: the partial lines at the row ends are written."""
    kern = kernels.get("cython")
    src = np.arange(2 * 40 * 131, dtype=np.float64).reshape(2, 40, 131)
    dst = np.full((2, 45, 147), -1.0)
    blocks = np.array([[3, 1, 5, 7, 30, 127, 0]], dtype=np.int64)
    kern.copy(src, dst, blocks, 1.0, True)
    np.testing.assert_array_equal(dst, oracle(src, np.full_like(dst, -1.0), blocks, 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_copy_refuses_blocks_outside_either_array(backend):
    kern = kernels.get(backend)
    src, dst = np.zeros((1, 4, 5)), np.zeros((1, 6, 3))
    with pytest.raises(ValueError, match=r"copy \(destination\).*does not fit"):
        kern.copy(src, dst, np.array([[0, 0, 0, 0, 4, 4, 0]], dtype=np.int64), 1.0, False)
    with pytest.raises(ValueError, match=r"copy \(source\).*does not fit"):
        kern.copy(src, dst, np.array([[1, 0, 3, 0, 4, 2, 0]], dtype=np.int64), 1.0, False)
    with pytest.raises(ValueError, match="levels"):
        kern.copy(np.zeros((2, 4, 5)), dst, np.zeros((0, 7), dtype=np.int64), 1.0, False)
