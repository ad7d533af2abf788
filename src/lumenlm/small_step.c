/* One decode step of a small model, whole, in one call: lumenlm.small_step.
 *
 * For each row b: the token's embedding (plus its learned position), then every block
 * (norm, fused q|k|v product, RoPE, the new keys/values written into the cache,
 * attention over the cache's columns under the row's key mask, the output product,
 * norm, the MLP: GELU or SwiGLU), the final norm and the vocabulary product. The same
 * operations, in the same order, as lumenlm/model/decode_step.py's `_step`, on the same
 * (in, out) weight copies; only the summation order of the products differs from torch's
 * BLAS. Every sum of a row runs over its own inputs in order, so a row gets the same
 * bits alone and in any batch, on any number of threads.
 *
 * fp32 throughout. The products split their columns over `threads` OpenMP threads
 * (torch's own pool: this library links libgomp, which resolves to torch's copy) where a
 * product is large enough to pay for waking them.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const float *w; /* (k, n) row-major, the (in, out) copy */
    const float *b; /* (n) or NULL */
    long k, n;
} Lin;

typedef struct {
    int kind; /* 0 identity, 1 layernorm, 2 rmsnorm */
    const float *w, *b;
    float eps;
} Norm;

typedef struct {
    Norm attn_norm, mlp_norm;
    Lin qkv, o, up, down; /* up: gate|up side by side for SwiGLU */
} Layer;

typedef struct {
    long d_model, n_layers, n_heads, n_kv, d_head, d_value, d_ff, vocab;
    int pre_norm, act; /* act: 0 gelu (erf), 1 gelu (tanh), 2 swiglu */
    const float *emb; /* (vocab, d) */
    const float *pos; /* (context, d) or NULL */
    const float *cos, *sin; /* (context, d_head) or NULL */
    const Layer *layers;
    Norm final_norm;
    Lin head;
} Net;

#define NBLOCK 256L  /* columns per block of a product: a row block stays in L1 */
#define PAR_WORK (1L << 18)  /* multiply-adds below which a product runs on one thread */

/* y (rows, n) = x (rows, k) @ w (+ b): per column block, k outer, rows inner, so each
 * weight row is read once per block for all rows; every output sums over k in order. */
static void linear(const Lin *l, const float *x, long rows, float *y, int threads) {
    const long k = l->k, n = l->n, nblocks = (n + NBLOCK - 1) / NBLOCK;
    const long work = rows * k * n;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && work >= PAR_WORK)
    for (long blk = 0; blk < nblocks; blk++) {
        const long n0 = blk * NBLOCK, n1 = n0 + NBLOCK < n ? n0 + NBLOCK : n;
        for (long r = 0; r < rows; r++) {
            float *restrict yr = y + r * n;
            if (l->b)
                for (long j = n0; j < n1; j++) yr[j] = l->b[j];
            else
                for (long j = n0; j < n1; j++) yr[j] = 0.0f;
        }
        for (long i = 0; i < k; i++) {
            const float *restrict wi = l->w + i * n;
            for (long r = 0; r < rows; r++) {
                const float xi = x[r * k + i];
                float *restrict yr = y + r * n;
                for (long j = n0; j < n1; j++) yr[j] += xi * wi[j];
            }
        }
    }
}

/* out = norm(x) for one row of d (out may be x) */
static void norm_row(const Norm *nm, const float *x, float *out, long d) {
    if (nm->kind == 0) {
        if (out != x) memcpy(out, x, d * sizeof(float));
        return;
    }
    if (nm->kind == 2) { /* RMSNorm: x * rsqrt(mean(x^2) + eps) * w */
        float ss = 0.0f;
        for (long j = 0; j < d; j++) ss += x[j] * x[j];
        const float scale = 1.0f / sqrtf(ss / (float)d + nm->eps);
        for (long j = 0; j < d; j++) out[j] = nm->w[j] * (x[j] * scale);
        return;
    }
    float mean = 0.0f, var = 0.0f; /* LayerNorm, biased variance */
    for (long j = 0; j < d; j++) mean += x[j];
    mean /= (float)d;
    for (long j = 0; j < d; j++) var += (x[j] - mean) * (x[j] - mean);
    const float inv = 1.0f / sqrtf(var / (float)d + nm->eps);
    for (long j = 0; j < d; j++) {
        float v = (x[j] - mean) * inv;
        if (nm->w) v *= nm->w[j];
        if (nm->b) v += nm->b[j];
        out[j] = v;
    }
}

/* x (heads, d) rotated in place by RoPE's "rotate half" at one position */
static void rope(float *x, long heads, long d, const float *cos, const float *sin) {
    const long h2 = d / 2;
    for (long h = 0; h < heads; h++) {
        float *v = x + h * d;
        for (long j = 0; j < h2; j++) {
            const float a = v[j], b = v[j + h2];
            v[j] = a * cos[j] - b * sin[j];
            v[j + h2] = b * cos[j + h2] + a * sin[j + h2];
        }
    }
}

/*
 * tokens, positions: (rows); column: the cache column the new keys go to; mask: row r's
 * key mask at mask + r * mask_stride, `keys` columns, additive (mask_bool 0: 0 or -inf)
 * or bool (1: nonzero = attend); k, v: the caches, element (l, r, g, s, :) at
 * l * layer_stride + r * row_stride + (g * cap + s) * d_head (d_value for v);
 * logits: (rows, vocab); scratch: at least lumenlm_small_step_scratch(net, rows, keys).
 */
long lumenlm_small_step_scratch(const Net *n, long rows, long keys) {
    const long qkv = n->n_heads * n->d_head + n->n_kv * (n->d_head + n->d_value);
    const long ff = n->act == 2 ? 2 * n->d_ff : n->d_ff;
    return rows * (3 * n->d_model + qkv + n->n_heads * n->d_value + ff + n->d_ff) + keys;
}

void lumenlm_small_step(const Net *n, long rows, const int64_t *tokens, const int64_t *positions,
                        long column, const void *mask, long mask_stride, int mask_bool,
                        float *kc, float *vc, long layer_stride_k, long row_stride_k,
                        long layer_stride_v, long row_stride_v, long cap, long keys,
                        float *logits, float *scratch, int threads) {
    const long D = n->d_model, H = n->n_heads, G = n->n_kv, Dh = n->d_head, Dv = n->d_value;
    const long F = n->d_ff, rep = H / G;
    const long qkv_n = H * Dh + G * (Dh + Dv), up_n = n->act == 2 ? 2 * F : F;
    float *x = scratch, *h = x + rows * D, *qkv = h + rows * D, *y = qkv + rows * qkv_n;
    float *a = y + rows * H * Dv, *u = a + rows * D, *m = u + rows * up_n, *p = m + rows * F;
    const float scale = 1.0f / sqrtf((float)Dh);

    for (long r = 0; r < rows; r++) {
        const float *e = n->emb + tokens[r] * D;
        for (long j = 0; j < D; j++) x[r * D + j] = e[j];
        if (n->pos) {
            const float *pe = n->pos + positions[r] * D;
            for (long j = 0; j < D; j++) x[r * D + j] += pe[j];
        }
    }
    for (long l = 0; l < n->n_layers; l++) {
        const Layer *L = n->layers + l;
        for (long r = 0; r < rows; r++)
            norm_row(n->pre_norm ? &L->attn_norm : &(Norm){0}, x + r * D, h + r * D, D);
        linear(&L->qkv, h, rows, qkv, threads);
        for (long r = 0; r < rows; r++) {
            float *q = qkv + r * qkv_n, *k = q + H * Dh, *v = k + G * Dh;
            if (n->cos) {
                const float *c = n->cos + positions[r] * Dh, *s = n->sin + positions[r] * Dh;
                rope(q, H, Dh, c, s);
                rope(k, G, Dh, c, s);
            }
            float *kr = kc + l * layer_stride_k + r * row_stride_k;
            float *vr = vc + l * layer_stride_v + r * row_stride_v;
            for (long g = 0; g < G; g++) {
                memcpy(kr + (g * cap + column) * Dh, k + g * Dh, Dh * sizeof(float));
                memcpy(vr + (g * cap + column) * Dv, v + g * Dv, Dv * sizeof(float));
            }
            const float *mf = (const float *)mask + r * mask_stride;
            const uint8_t *mb = (const uint8_t *)mask + r * mask_stride;
            for (long hq = 0; hq < H; hq++) {
                const long g = hq / rep;
                const float *qh = q + hq * Dh, *kg = kr + g * cap * Dh, *vg = vr + g * cap * Dv;
                float best = -INFINITY;
                for (long s = 0; s < keys; s++) {
                    float sc;
                    if (mask_bool) {
                        if (!mb[s]) { p[s] = -INFINITY; continue; }
                        sc = 0.0f;
                    } else {
                        sc = mf[s];
                        if (sc == -INFINITY) { p[s] = -INFINITY; continue; }
                    }
                    float dot = 0.0f;
                    for (long j = 0; j < Dh; j++) dot += qh[j] * kg[s * Dh + j];
                    p[s] = dot * scale + sc;
                    if (p[s] > best) best = p[s];
                }
                float total = 0.0f;
                for (long s = 0; s < keys; s++) {
                    p[s] = p[s] == -INFINITY ? 0.0f : expf(p[s] - best);
                    total += p[s];
                }
                float *yh = y + r * H * Dv + hq * Dv;
                for (long j = 0; j < Dv; j++) yh[j] = 0.0f;
                for (long s = 0; s < keys; s++) {
                    if (p[s] == 0.0f) continue;
                    const float w = p[s] / total;
                    for (long j = 0; j < Dv; j++) yh[j] += w * vg[s * Dv + j];
                }
            }
        }
        linear(&L->o, y, rows, a, threads);
        for (long r = 0; r < rows; r++) {
            float *xr = x + r * D, *ar = a + r * D, *hr = h + r * D;
            for (long j = 0; j < D; j++) xr[j] += ar[j];
            if (n->pre_norm)
                norm_row(&L->mlp_norm, xr, hr, D);
            else {
                norm_row(&L->attn_norm, xr, xr, D);
                memcpy(hr, xr, D * sizeof(float));
            }
        }
        linear(&L->up, h, rows, u, threads);
        for (long r = 0; r < rows; r++) {
            const float *ur = u + r * up_n;
            float *mr = m + r * F;
            if (n->act == 2) {
                for (long j = 0; j < F; j++) {
                    const float g = ur[j];
                    mr[j] = g / (1.0f + expf(-g)) * ur[F + j];
                }
            } else if (n->act == 1) {
                for (long j = 0; j < F; j++) {
                    const float t = ur[j];
                    mr[j] = 0.5f * t * (1.0f + tanhf(0.7978845608028654f * (t + 0.044715f * t * t * t)));
                }
            } else {
                for (long j = 0; j < F; j++) mr[j] = 0.5f * ur[j] * (1.0f + erff(ur[j] * 0.7071067811865476f));
            }
        }
        linear(&L->down, m, rows, a, threads);
        for (long r = 0; r < rows; r++) {
            float *xr = x + r * D, *ar = a + r * D;
            for (long j = 0; j < D; j++) xr[j] += ar[j];
            if (!n->pre_norm) norm_row(&L->mlp_norm, xr, xr, D);
        }
    }
    for (long r = 0; r < rows; r++) norm_row(&n->final_norm, x + r * D, h + r * D, D);
    linear(&n->head, h, rows, logits, threads);
}
