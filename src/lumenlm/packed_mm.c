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

/* one row: four independent accumulator pairs over k (FMA latency, not one chain) */
static void rows1(const float *x, long K, const float *p, float *y, long cols) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
    __m256 d0 = _mm256_setzero_ps(), d1 = _mm256_setzero_ps();
    long k = 0;
    for (; k + 4 <= K; k += 4) {
        const float *q = p + k * 16;
        __m256 x0 = _mm256_broadcast_ss(x + k), x1 = _mm256_broadcast_ss(x + k + 1);
        __m256 x2 = _mm256_broadcast_ss(x + k + 2), x3 = _mm256_broadcast_ss(x + k + 3);
        a0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(q), a0);
        a1 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(q + 8), a1);
        b0 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(q + 16), b0);
        b1 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(q + 24), b1);
        c0 = _mm256_fmadd_ps(x2, _mm256_loadu_ps(q + 32), c0);
        c1 = _mm256_fmadd_ps(x2, _mm256_loadu_ps(q + 40), c1);
        d0 = _mm256_fmadd_ps(x3, _mm256_loadu_ps(q + 48), d0);
        d1 = _mm256_fmadd_ps(x3, _mm256_loadu_ps(q + 56), d1);
    }
    for (; k < K; k++) {
        __m256 x0 = _mm256_broadcast_ss(x + k);
        a0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(p + k * 16), a0);
        a1 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(p + k * 16 + 8), a1);
    }
    a0 = _mm256_add_ps(_mm256_add_ps(a0, b0), _mm256_add_ps(c0, d0));
    a1 = _mm256_add_ps(_mm256_add_ps(a1, b1), _mm256_add_ps(c1, d1));
    store(y, 0, 0, a0, a1, cols);
}

/* two rows: two accumulator pairs per row over even and odd k */
static void rows2(const float *x, long K, const float *p, float *y, long ldy, long cols) {
    const float *x1 = x + K;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), e0 = _mm256_setzero_ps(), e1 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps();
    long k = 0;
    for (; k + 2 <= K; k += 2) {
        const float *q = p + k * 16;
        __m256 w0 = _mm256_loadu_ps(q), w1 = _mm256_loadu_ps(q + 8);
        __m256 v0 = _mm256_loadu_ps(q + 16), v1 = _mm256_loadu_ps(q + 24);
        __m256 s = _mm256_broadcast_ss(x + k), t = _mm256_broadcast_ss(x1 + k);
        a0 = _mm256_fmadd_ps(s, w0, a0); a1 = _mm256_fmadd_ps(s, w1, a1);
        b0 = _mm256_fmadd_ps(t, w0, b0); b1 = _mm256_fmadd_ps(t, w1, b1);
        s = _mm256_broadcast_ss(x + k + 1); t = _mm256_broadcast_ss(x1 + k + 1);
        e0 = _mm256_fmadd_ps(s, v0, e0); e1 = _mm256_fmadd_ps(s, v1, e1);
        f0 = _mm256_fmadd_ps(t, v0, f0); f1 = _mm256_fmadd_ps(t, v1, f1);
    }
    for (; k < K; k++) {
        const float *q = p + k * 16;
        __m256 w0 = _mm256_loadu_ps(q), w1 = _mm256_loadu_ps(q + 8);
        __m256 s = _mm256_broadcast_ss(x + k), t = _mm256_broadcast_ss(x1 + k);
        a0 = _mm256_fmadd_ps(s, w0, a0); a1 = _mm256_fmadd_ps(s, w1, a1);
        b0 = _mm256_fmadd_ps(t, w0, b0); b1 = _mm256_fmadd_ps(t, w1, b1);
    }
    store(y, ldy, 0, _mm256_add_ps(a0, e0), _mm256_add_ps(a1, e1), cols);
    store(y, ldy, 1, _mm256_add_ps(b0, f0), _mm256_add_ps(b1, f1), cols);
}

/* three or four rows: one accumulator pair per row */
static void rows4(const float *x, long rows, long K, const float *p, float *y, long ldy, long cols) {
    const float *x1 = x + K, *x2 = x + 2 * K, *x3 = x + (rows > 3 ? 3 : 2) * K;
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
    store(y, ldy, 2, c0, c1, cols);
    if (rows > 3) store(y, ldy, 3, d0, d1, cols);
}

/* y (M, N) row-major = x (M, K) row-major @ w, with w packed by lumenlm_pack; the panels
   are shared out among `threads` OpenMP threads (torch's own pool: the same libgomp) */
void lumenlm_packed_mm(const float *x, long M, long K, const float *p, long N, float *y,
                       int threads) {
    long nb = (N + 15) / 16;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long j = 0; j < nb; j++) {
        const float *pj = p + j * K * 16;
        long cols = N - 16 * j < 16 ? N - 16 * j : 16;
        for (long m = 0; m < M;) {
            long left = M - m;
            const float *xm = x + m * K;
            float *ym = y + m * N + 16 * j;
            if (left == 1) { rows1(xm, K, pj, ym, cols); m += 1; }
            else if (left == 2) { rows2(xm, K, pj, ym, N, cols); m += 2; }
            else { long r = left < 4 ? left : 4; rows4(xm, r, K, pj, ym, N, cols); m += r; }
        }
    }
}
