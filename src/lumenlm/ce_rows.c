/* Cross-entropy over rows of fp32 logits, each row in one sitting: lumenlm.ce_rows.
 *
 * torch runs a chunk's log-softmax, gather, exp, scatter and comparison as separate
 * kernels, each streaming the whole (rows, V) chunk through memory; here each row is
 * read and written while it sits in the core's L1/L2 (a row of 8000 floats is 32 KB).
 *
 * lumenlm_ce_scores (evaluation): per row, the NLL of its target (max + log of the sum
 * of exp(x - max), minus the target's logit) and its rank (how many logits are strictly
 * greater than the target's). Two reads of the row, no writes.
 *
 * lumenlm_ce_grad (training): per row, the NLL and, in place of the logits, the row's
 * gradient scale * (softmax - onehot(target)). Three passes over the row: max; exp and
 * sum (written into the row); multiply by scale / sum.
 *
 * exp is a Cephes-style polynomial in AVX2/FMA (about 1 ulp); the sums run in 8 lanes,
 * so results equal torch's to float rounding, not bit for bit. A NaN or +inf logit makes
 * the row's NLL NaN (x - max is NaN there and the clamp below keeps NaN), as torch's
 * log-softmax does. Rows split over `threads` OpenMP threads (torch's pool: libgomp).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define PAR_WORK (1L << 16) /* logits below which a call runs on one thread */

/* exp(x) for x <= 0 (and NaN), 8 lanes; x below -87.3 gives about 1e-38 instead of
 * a smaller number or 0, which no sum or gradient here can tell apart. */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    x = _mm256_max_ps(lo, x); /* (lo > x) ? lo : x: a NaN x stays NaN */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                         _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

static float row_max(const float *x, long v) {
    __m256 m = _mm256_set1_ps(-INFINITY);
    long j = 0;
    for (; j + 8 <= v; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
    float best = hmax(m);
    for (; j < v; j++) best = x[j] > best ? x[j] : best;
    return best;
}

/* sum of exp(x - m); with `out`, exp(x - m) is also written there (may be x itself). */
static float row_exp_sum(const float *x, long v, float m, float *out) {
    const __m256 mm = _mm256_set1_ps(m);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    long j = 0;
    for (; j + 16 <= v; j += 16) {
        const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), mm));
        const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), mm));
        if (out) {
            _mm256_storeu_ps(out + j, e0);
            _mm256_storeu_ps(out + j + 8, e1);
        }
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
    }
    for (; j + 8 <= v; j += 8) {
        const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), mm));
        if (out) _mm256_storeu_ps(out + j, e0);
        s0 = _mm256_add_ps(s0, e0);
    }
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; j < v; j++) {
        const float d = x[j] - m;
        const float e = d < -87.3f ? expf(-87.3f) : expf(d); /* NaN d: expf(NaN) */
        if (out) out[j] = e;
        s += e;
    }
    return s;
}

static long row_rank(const float *x, long v, float xt) {
    const __m256 t = _mm256_set1_ps(xt);
    __m256i c = _mm256_setzero_si256();
    long j = 0;
    for (; j + 8 <= v; j += 8) /* a true lane is -1: subtracting counts it */
        c = _mm256_sub_epi32(c, _mm256_castps_si256(
                                    _mm256_cmp_ps(_mm256_loadu_ps(x + j), t, _CMP_GT_OQ)));
    int32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, c);
    long n = 0;
    for (int i = 0; i < 8; i++) n += lanes[i];
    for (; j < v; j++) n += x[j] > xt;
    return n;
}

/* Returns 0, or 1 + the last row whose target is outside [0, v) (max over threads). */
long lumenlm_ce_scores(const float *logits, long rows, long v, long ld, const int64_t *targets,
                       float *nll, int64_t *rank, int threads) {
    long bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) \
    if (threads > 1 && rows * v >= PAR_WORK) reduction(max : bad)
    for (long r = 0; r < rows; r++) {
        const float *x = logits + r * ld;
        const int64_t t = targets[r];
        if (t < 0 || t >= v) {
            bad = bad > r + 1 ? bad : r + 1;
            continue;
        }
        const float m = row_max(x, v);
        const float s = row_exp_sum(x, v, m, 0);
        nll[r] = m + logf(s) - x[t];
        rank[r] = row_rank(x, v, x[t]);
    }
    return bad;
}

/* In place: row r of `logits` becomes scale[r] * (softmax - onehot(target)); nll[r] its
 * target's NLL. A row with scale 0 (an ignored target, whatever its id) becomes zeros
 * and its NLL 0. Returns 0, or 1 + the last scaled row whose target is outside [0, v). */
long lumenlm_ce_grad(float *logits, long rows, long v, long ld, const int64_t *targets,
                     const float *scale, float *nll, int threads) {
    long bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) \
    if (threads > 1 && rows * v >= PAR_WORK) reduction(max : bad)
    for (long r = 0; r < rows; r++) {
        float *x = logits + r * ld;
        const int64_t t = targets[r];
        const float c = scale[r];
        if (c == 0.0f) {
            for (long j = 0; j < v; j++) x[j] = 0.0f;
            nll[r] = 0.0f;
            continue;
        }
        if (t < 0 || t >= v) {
            bad = bad > r + 1 ? bad : r + 1;
            continue;
        }
        const float xt = x[t];
        const float m = row_max(x, v);
        const float s = row_exp_sum(x, v, m, x);
        nll[r] = m + logf(s) - xt;
        const __m256 k = _mm256_set1_ps(c / s);
        long j = 0;
        for (; j + 8 <= v; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), k));
        for (; j < v; j++) x[j] *= c / s;
        x[t] -= c;
    }
    return bad;
}
