/* Row copies with non-temporal (streaming) stores, for unpacks larger than the caches: the
 * destination lines are written without being read first (no read-for-ownership), which is what
 * a large memcpy gets and a sequence of short row memcpys does not. Falls back to memcpy where
 * SSE2 is absent. Callers issue stream_fence() once after the last row. */
#ifndef EOPHIS_STREAM_COPY_H
#define EOPHIS_STREAM_COPY_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>

/* Only whole 64-byte lines are streamed: the partial lines at both ends of a row take ordinary
 * stores (a partially written line would make a streaming store slow: measured 3x). */
static inline void stream_row_f64(double *dst, const double *src, ptrdiff_t n) {
    ptrdiff_t c = 0;
    while (c < n && ((uintptr_t)(dst + c) & 63)) { dst[c] = src[c]; c++; }
    for (; c + 8 <= n; c += 8) {
        _mm_stream_pd(dst + c, _mm_loadu_pd(src + c));
        _mm_stream_pd(dst + c + 2, _mm_loadu_pd(src + c + 2));
        _mm_stream_pd(dst + c + 4, _mm_loadu_pd(src + c + 4));
        _mm_stream_pd(dst + c + 6, _mm_loadu_pd(src + c + 6));
    }
    for (; c < n; c++) dst[c] = src[c];
}

static inline void stream_row_f32(float *dst, const float *src, ptrdiff_t n) {
    ptrdiff_t c = 0;
    while (c < n && ((uintptr_t)(dst + c) & 63)) { dst[c] = src[c]; c++; }
    for (; c + 16 <= n; c += 16) {
        _mm_stream_ps(dst + c, _mm_loadu_ps(src + c));
        _mm_stream_ps(dst + c + 4, _mm_loadu_ps(src + c + 4));
        _mm_stream_ps(dst + c + 8, _mm_loadu_ps(src + c + 8));
        _mm_stream_ps(dst + c + 12, _mm_loadu_ps(src + c + 12));
    }
    for (; c < n; c++) dst[c] = src[c];
}

static inline void stream_fence(void) { _mm_sfence(); }
#else
static inline void stream_row_f64(double *dst, const double *src, ptrdiff_t n) {
    memcpy(dst, src, (size_t)n * sizeof(double));
}
static inline void stream_row_f32(float *dst, const float *src, ptrdiff_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}
static inline void stream_fence(void) {}
#endif
#endif
