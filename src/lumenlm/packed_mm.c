/* The packed decode kernel of lumenlm.packed: see that module for why and how it is used.
   Compiled at run time (lumenlm.cbuild) with -O3 -mavx2 -mfma -fopenmp. */

#include <immintrin.h>

/* Panels of 16 columns: p[j][k][0..16) = w[k][16j + c]; the last panel zero-padded. */
void lumenlm_pack(const float *w, long K, long N, float *p) {
    long nb = (N + 15) / 16;
    for (long j = 0; j < nb; j++)
        for (long k = 0; k < K; k++)
            for (long c = 0; c < 16; c++) {
                long n = 16 * j + c;
                p[(j * K + k) * 16 + c] = n < N ? w[k * N + n] : 0.0f;
            }
}

static inline void store(float *y, long ldy, long r, __m256 a0, __m256 a1, long cols) {
    if (cols == 16) {
        _mm256_storeu_ps(y + r * ldy, a0);
        _mm256_storeu_ps(y + r * ldy + 8, a1);
    } else {
        float t[16];
        _mm256_storeu_ps(t, a0);
        _mm256_storeu_ps(t + 8, a1);
        for (long c = 0; c < cols; c++) y[r * ldy + c] = t[c];
    }
}

/* one row by up to four consecutive panels: eight independent accumulators (so FMA
   latency does not bound it), each a sum over k in order, as rows4's are */
static void row1x4(const float *x, long K, const float *p, long panels, float *y, long n0) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
    __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();
    const long S = K * 16; /* floats per panel */
    const float *p1 = p + S, *p2 = p + 2 * S, *p3 = p + 3 * S;
    if (panels == 4) {
        for (long k = 0; k < K; k++) {
            __m256 s = _mm256_broadcast_ss(x + k);
            long o = k * 16;
            a0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p + o), a0);
            a1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p + o + 8), a1);
            b0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p1 + o), b0);
            b1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p1 + o + 8), b1);
            c0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p2 + o), c0);
            c1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p2 + o + 8), c1);
            d0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p3 + o), d0);
            d1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p3 + o + 8), d1);
        }
    } else {
        for (long k = 0; k < K; k++) {
            __m256 s = _mm256_broadcast_ss(x + k);
            long o = k * 16;
            a0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p + o), a0);
            a1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p + o + 8), a1);
            if (panels > 1) {
                b0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p1 + o), b0);
                b1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p1 + o + 8), b1);
            }
            if (panels > 2) {
                c0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p2 + o), c0);
                c1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(p2 + o + 8), c1);
            }
        }
    }
    /* n0: the group's columns (at most 64); the last panel may be partly padding */
    __m256 acc[8] = {a0, a1, b0, b1, c0, c1, d0, d1};
    for (long q = 0; q < panels; q++) {
        long cols = n0 - 16 * q < 16 ? n0 - 16 * q : 16;
        store(y + 16 * q, 0, 0, acc[2 * q], acc[2 * q + 1], cols);
    }
}

/* two to four rows: one accumulator pair per row, each a sum over k in order */
static void rows4(const float *x, long rows, long K, const float *p, float *y, long ldy, long cols) {
    /* rows past the last are read again from the last one (never past x), not stored */
    const float *x1 = x + K, *x2 = x + (rows > 2 ? 2 : 1) * K;
    const float *x3 = x + (rows > 3 ? 3 : rows - 1) * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();
    for (long k = 0; k < K; k++) {
        const float *q = p + k * 16;
        __m256 w0 = _mm256_loadu_ps(q), w1 = _mm256_loadu_ps(q + 8);
        __m256 s = _mm256_broadcast_ss(x + k);
        a0 = _mm256_fmadd_ps(s, w0, a0); a1 = _mm256_fmadd_ps(s, w1, a1);
        s = _mm256_broadcast_ss(x1 + k);
        b0 = _mm256_fmadd_ps(s, w0, b0); b1 = _mm256_fmadd_ps(s, w1, b1);
        s = _mm256_broadcast_ss(x2 + k);
        c0 = _mm256_fmadd_ps(s, w0, c0); c1 = _mm256_fmadd_ps(s, w1, c1);
        s = _mm256_broadcast_ss(x3 + k);
        d0 = _mm256_fmadd_ps(s, w0, d0); d1 = _mm256_fmadd_ps(s, w1, d1);
    }
    store(y, ldy, 0, a0, a1, cols);
    store(y, ldy, 1, b0, b1, cols);
    if (rows > 2) store(y, ldy, 2, c0, c1, cols);
    if (rows > 3) store(y, ldy, 3, d0, d1, cols);
}

/* y (M, N) row-major = x (M, K) row-major @ w, with w packed by lumenlm_pack. Groups of
   four panels are shared out among `threads` OpenMP threads (torch's own pool: the same
   libgomp). Every output is the same in-order sum over k whatever M is, so a row gets
   the same bits alone and in a batch. */
void lumenlm_packed_mm(const float *x, long M, long K, const float *p, long N, float *y,
                       int threads) {
    long nb = (N + 15) / 16, groups = (nb + 3) / 4;
    long tail = M % 4 == 1 ? 1 : 0; /* a last single row goes to row1x4 */
    long full = M - tail;           /* the rest, 2-4 rows at a time, to rows4 */
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long g = 0; g < groups; g++) {
        long j0 = 4 * g, panels = nb - j0 < 4 ? nb - j0 : 4;
        for (long j = j0; j < j0 + panels; j++) {
            const float *pj = p + j * K * 16;
            long cols = N - 16 * j < 16 ? N - 16 * j : 16;
            for (long m = 0; m < full;) {
                long r = full - m < 4 ? full - m : 4;
                rows4(x + m * K, r, K, pj, y + m * N + 16 * j, N, cols);
                m += r;
            }
        }
        if (tail) {
            long n0 = N - 16 * j0 < 64 ? N - 16 * j0 : 64;
            row1x4(x + full * K, K, p + j0 * K * 16, panels, y + full * N + 16 * j0, n0);
        }
    }
}
