# cython: language_level=3
"""Pack, unpack, fill and copy kernels of the plan's block copies (Cython backend).

Twins of ``eophis_hpc.kernels.numpy_ref`` (the oracle) and ``eophis_hpc.kernels.numba_backend``.
The runs are checked against the array shapes before the ``nogil`` loops, so a bad plan raises a
ValueError instead of writing out of bounds. Source and destination dtypes may differ (float32 and
float64): the cast happens in the copy, never as an extra pass. No MPI here.
"""
from libc.stdint cimport int64_t
from libc.string cimport memcpy


cdef extern from "_stream_copy.h" nogil:
    void stream_row_f64(double *dst, const double *src, Py_ssize_t n)
    void stream_row_f32(float *dst, const float *src, Py_ssize_t n)
    void stream_fence()


# Unpacks moving at least this many bytes write with streaming stores: the tile will not be in
# cache anyway, and skipping the read-for-ownership saves a third of the memory traffic.
STREAM_BYTES = 4 << 20
cdef Py_ssize_t _stream_bytes = STREAM_BYTES
# ...and only rows of at least this many elements: short rows would leave partial cache lines,
# which streaming stores turn into slow partial writes (many short runs: 5x slower, measured).
STREAM_ROW = 64
cdef Py_ssize_t _stream_row = STREAM_ROW

ctypedef fused src_t:
    float
    double

ctypedef fused dst_t:
    float
    double


cdef inline Py_ssize_t _check_runs(const int64_t[:, ::1] runs, Py_ssize_t ncols,
                                   Py_ssize_t ny, Py_ssize_t nx, str what) except -1:
    """Check every run fits a ``ny x nx`` plane; return the cells per level of all runs."""
    cdef Py_ssize_t r, total = 0
    if runs.shape[0] and runs.shape[1] < ncols:
        raise ValueError(f"{what}: runs must have {ncols} columns, got {runs.shape[1]}")
    for r in range(runs.shape[0]):
        if (runs[r, 0] < 0 or runs[r, 1] < 0 or runs[r, 2] < 0 or runs[r, 3] < 0
                or runs[r, 0] + runs[r, 2] > ny or runs[r, 1] + runs[r, 3] > nx):
            raise ValueError(f"{what}: run {r} (j={runs[r, 0]}, i={runs[r, 1]}, nj={runs[r, 2]}, "
                             f"ni={runs[r, 3]}) does not fit an array of {ny}x{nx} points")
        total += runs[r, 2] * runs[r, 3]
    return total


cdef inline bint _row(dst_t* row, const src_t* inp, Py_ssize_t ni, bint stream) noexcept nogil:
    """Copy one row of ``ni`` values (cast if the types differ); with ``stream``, rows of at
    least ``_stream_row`` values of the same type take streaming stores. Whether it streamed
    (the caller then fences once)."""
    cdef Py_ssize_t c
    if src_t is dst_t:
        if stream and ni >= _stream_row:
            if dst_t is double:
                stream_row_f64(row, inp, ni)
            else:
                stream_row_f32(row, inp, ni)
            return True
        memcpy(row, inp, ni * sizeof(dst_t))
    else:
        for c in range(ni):
            row[c] = <dst_t> inp[c]
    return False


def pack(const src_t[:, :, ::1] src, const int64_t[:, ::1] runs, dst_t[::1] buf):
    """Copy the ``(sj, si, nj, ni)`` runs of ``src`` (all levels) into ``buf``, block after block,
    each block level-major."""
    cdef Py_ssize_t nz = src.shape[0], ny = src.shape[1], nx = src.shape[2]
    cdef Py_ssize_t total = _check_runs(runs, 4, ny, nx, "pack") * nz
    if total != buf.shape[0]:
        raise ValueError(f"pack: the runs hold {total} values, the buffer has {buf.shape[0]}")
    if total == 0:
        return
    cdef Py_ssize_t r, k, j, c, sj, si, nj, ni, pos = 0
    cdef const src_t* row
    cdef dst_t* out
    with nogil:
        for r in range(runs.shape[0]):
            sj = runs[r, 0]; si = runs[r, 1]; nj = runs[r, 2]; ni = runs[r, 3]
            for k in range(nz):
                for j in range(nj):
                    row = &src[k, sj + j, si]
                    out = &buf[pos]
                    if src_t is dst_t:
                        memcpy(out, row, ni * sizeof(dst_t))
                    else:
                        for c in range(ni):
                            out[c] = <dst_t> row[c]
                    pos += ni


def unpack(const src_t[::1] buf, dst_t[:, :, ::1] dst, const int64_t[:, ::1] runs, double sign):
    """Copy ``buf`` into the ``(dj, di, nj, ni, fold)`` runs of ``dst``; a folded run is written
    reversed in j and i and multiplied by ``sign`` (the north fold)."""
    cdef Py_ssize_t nz = dst.shape[0], ny = dst.shape[1], nx = dst.shape[2]
    cdef Py_ssize_t total = _check_runs(runs, 5, ny, nx, "unpack") * nz
    if total != buf.shape[0]:
        raise ValueError(f"unpack: the runs hold {total} values, the buffer has {buf.shape[0]}")
    if total == 0:
        return
    cdef Py_ssize_t r, k, j, c, dj, di, nj, ni, pos = 0
    cdef const src_t* inp
    cdef dst_t* row
    cdef src_t s = <src_t> sign
    cdef bint stream = src_t is dst_t and total * <Py_ssize_t> sizeof(dst_t) >= _stream_bytes
    with nogil:
        for r in range(runs.shape[0]):
            dj = runs[r, 0]; di = runs[r, 1]; nj = runs[r, 2]; ni = runs[r, 3]
            if runs[r, 4]:
                for k in range(nz):
                    for j in range(nj):
                        row = &dst[k, dj + nj - 1 - j, di]
                        inp = &buf[pos]
                        for c in range(ni):
                            row[ni - 1 - c] = <dst_t> (s * inp[c])
                        pos += ni
            else:
                for k in range(nz):
                    for j in range(nj):
                        _row(&dst[k, dj + j, di], &buf[pos], ni, stream)
                        pos += ni
        if stream:
            stream_fence()


def copy(const src_t[:, :, ::1] src, dst_t[:, :, ::1] dst, const int64_t[:, ::1] blocks,
         double sign, bint stream=False):
    """Copy the ``(sj, si, nj, ni)`` block of ``src`` to ``(dj, di)`` of ``dst`` for every
    ``(sj, si, dj, di, nj, ni, fold)`` row of ``blocks``, all levels, in one pass (no buffer in
    between); a folded block is written reversed in j and i and multiplied by ``sign``.
    ``stream``: write rows of at least the row threshold (``STREAM_ROW``, or what
    :func:`set_stream_bytes` set) around the caches (the caller knows the whole transfer's
    size; one call may be a slab of it)."""
    cdef Py_ssize_t nz = src.shape[0]
    if dst.shape[0] != nz:
        raise ValueError(f"copy: the source has {nz} levels, the destination {dst.shape[0]}")
    if blocks.shape[0] and blocks.shape[1] < 7:
        raise ValueError(f"copy: blocks must have 7 columns, got {blocks.shape[1]}")
    cdef Py_ssize_t r
    for r in range(blocks.shape[0]):
        for end, at_j, at_i, ny, nx in (("source", blocks[r, 0], blocks[r, 1], src.shape[1],
                                         src.shape[2]),
                                        ("destination", blocks[r, 2], blocks[r, 3],
                                         dst.shape[1], dst.shape[2])):
            if (at_j < 0 or at_i < 0 or blocks[r, 4] < 0 or blocks[r, 5] < 0
                    or at_j + blocks[r, 4] > ny or at_i + blocks[r, 5] > nx):
                raise ValueError(f"copy ({end}): block {r} (j={at_j}, i={at_i}, "
                                 f"nj={blocks[r, 4]}, ni={blocks[r, 5]}) does not fit an array "
                                 f"of {ny}x{nx} points")
    cdef Py_ssize_t k, j, c, sj, si, dj, di, nj, ni
    cdef const src_t* inp
    cdef dst_t* row
    cdef src_t s = <src_t> sign
    cdef bint streamed = False
    with nogil:
        for r in range(blocks.shape[0]):
            sj = blocks[r, 0]; si = blocks[r, 1]; dj = blocks[r, 2]; di = blocks[r, 3]
            nj = blocks[r, 4]; ni = blocks[r, 5]
            for k in range(nz):
                for j in range(nj):
                    inp = &src[k, sj + j, si]
                    if blocks[r, 6]:
                        row = &dst[k, dj + nj - 1 - j, di]
                        for c in range(ni):
                            row[ni - 1 - c] = <dst_t> (s * inp[c])
                        continue
                    streamed |= _row(&dst[k, dj + j, di], inp, ni, stream)
        if streamed:
            stream_fence()


def set_stream_bytes(Py_ssize_t nbytes, Py_ssize_t row=-1):
    """Thresholds above which unpacks use streaming stores: bytes per call and (if given)
    elements per row, the row threshold also of :func:`copy`; for tuning and tests. Returns
    the previous (bytes, row)."""
    global _stream_bytes, _stream_row
    old = (_stream_bytes, _stream_row)
    _stream_bytes = nbytes
    if row >= 0:
        _stream_row = row
    return old


def fill(dst_t[:, :, ::1] dst, const int64_t[:, ::1] rects, double value):
    """Set the ``(dj, di, nj, ni)`` rects of every level of ``dst`` to ``value``."""
    cdef Py_ssize_t nz = dst.shape[0], ny = dst.shape[1], nx = dst.shape[2]
    _check_runs(rects, 4, ny, nx, "fill")
    cdef Py_ssize_t r, k, j, c, dj, di, nj, ni
    cdef dst_t v = <dst_t> value
    cdef dst_t* row
    with nogil:
        for r in range(rects.shape[0]):
            dj = rects[r, 0]; di = rects[r, 1]; nj = rects[r, 2]; ni = rects[r, 3]
            for k in range(nz):
                for j in range(nj):
                    row = &dst[k, dj + j, di]
                    for c in range(ni):
                        row[c] = v
