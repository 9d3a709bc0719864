/* A Qwen3 decoder stack for a single sequence (decode steps and prefill), in plain C, and the
 * load-time weight preparation it needs.
 *
 * Why this exists: on a CPU, a decode step of one stream is bound by memory bandwidth (every
 * weight is read once per token) plus the fixed cost of each framework op. Between its four
 * matrix-vector products a layer runs about twenty tiny ops (norms, rotary, cache writes,
 * attention over a few hundred keys); in PyTorch eager each costs microseconds of dispatch, which
 * over the ~110 layer passes of a frame (talker + 15 code-predictor steps) was half the frame
 * time. Here a whole stack runs in one call: the products stream int8 (with per-row scales) or
 * float16 weights against float32 activations, and everything else is a few loops over L1-sized
 * arrays.
 *
 * Built at run time by utter/engine/cpu/native.py with the machine's C compiler (-O3 -march=native
 * -fopenmp) and called through ctypes: no Python or torch headers are needed. Products split
 * their output rows (attention its heads) across OpenMP threads. Loaded after torch, the library's
 * libgomp.so.1 resolves to the copy torch already loaded, so both share one team of threads: a
 * second runtime's threads spinning next to torch's would fight them for the cores.
 *
 * Math per layer (the official order; all float32):
 *   h = rms(x) * w_in;  q,k,v = W_qkv h;  q,k = rope(rms(q|k per head) * w_qk);  cache <- k, v
 *   x += W_o attention(q, cache);  h = rms(x) * w_post;  x += W_down (silu(W_gate h) * W_up h)
 * and the stack's output is rms(x) * w_final.
 */
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define MAX_ROWS 4 /* tokens per register tile: a product takes them four at a time */

typedef struct {
    const float *in_norm, *qk_norm, *post_norm; /* [hidden], [heads + kv_heads, head_dim], [hidden] */
    const void *qkv, *o, *gate_up, *down; /* int8 or float16 (IEEE half bits), blocked (see dots) */
    const float *qkv_s, *o_s, *gate_up_s, *down_s; /* per-output-row scales (int8 only) */
} Layer;

typedef struct {
    int32_t n_layers, hidden, heads, kv_heads, head_dim, inter;
    int32_t weight_type; /* 0: int8 with scales, 1: float16 */
    float eps;
    const float *final_norm;
    const Layer *layers;
} Stack;

/* ------------------------------------------------------------ matrix x vectors */

/* Weights [16] (or [8]) at w + i as float lanes: type 0 int8, 1 float16, 2 float32 (a converted tile). */
#if defined(__AVX512F__)
#define LANES 16
typedef __m512 vec;
static inline vec load_w(const void *w, size_t i, int type) {
    if (type == 2) return _mm512_loadu_ps((const float *)w + i);
    return type == 0 ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)w + i))))
                     : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
}
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VZERO() _mm512_setzero_ps()
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VLOAD(p) _mm512_loadu_ps(p)
static inline float vsum(vec v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define LANES 8
typedef __m256 vec;
static inline vec load_w(const void *w, size_t i, int type) {
    if (type == 2) return _mm256_loadu_ps((const float *)w + i);
    return type == 0 ? _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)w + i))))
                     : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
}
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VZERO() _mm256_setzero_ps()
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VLOAD(p) _mm256_loadu_ps(p)
static inline float vsum(vec v) {
    float lanes[8], s = 0.0f;
    _mm256_storeu_ps(lanes, v);
    for (int l = 0; l < 8; l++) s += lanes[l];
    return s;
}
#else
#define LANES 0 /* no vector unit this file knows: native.py keeps the PyTorch path */
#endif

/* Weights are blocked for streaming (see native.py): for each block of BLOCK output rows, for
 * each run of LANES inputs, the BLOCK rows' LANES values side by side. A block-row step is then
 * one contiguous read (one cache line for int8 with 16 lanes), so memory is read strictly in
 * order and the prefetcher (with a software prefetch a few lines ahead) keeps it streaming. */
#define BLOCK 4
#define PREFETCH_BYTES 4096 /* 1024 before: from DRAM on a Zen 5, 8 tokens' product 0.39 -> 0.29 ms (6 MB int8) */

int utter_lanes(void) { return LANES; }

/* out[r][j] = dot(row r of the block at w, x row j); M is a constant at each call site, so the
 * BLOCK x M accumulators live in registers (independent FMA chains). */
static inline __attribute__((always_inline)) void dots(const char *w, const float *x, int k, const int M,
                                                        const int type, float out[BLOCK][MAX_ROWS]) {
#if LANES
    const size_t esize = type == 0 ? 1 : type == 1 ? 2 : 4, step = (size_t)BLOCK * LANES * esize;
    vec acc[BLOCK][MAX_ROWS];
    for (int r = 0; r < BLOCK; r++)
        for (int j = 0; j < M; j++) acc[r][j] = VZERO();
    for (int i = 0; i < k; i += LANES, w += step) {
        _mm_prefetch(w + PREFETCH_BYTES, _MM_HINT_T0);
        if (step > 64) _mm_prefetch(w + PREFETCH_BYTES + 64, _MM_HINT_T0);
        vec xs[MAX_ROWS];
        for (int j = 0; j < M; j++) xs[j] = VLOAD(x + (size_t)j * k + i);
        for (int r = 0; r < BLOCK; r++) {
            vec wv = load_w(w, (size_t)r * LANES, type);
            for (int j = 0; j < M; j++) acc[r][j] = VFMA(wv, xs[j], acc[r][j]);
        }
    }
    for (int r = 0; r < BLOCK; r++)
        for (int j = 0; j < M; j++) out[r][j] = vsum(acc[r][j]);
#else
    (void)w, (void)x, (void)k, (void)M, (void)type, (void)out;
#endif
}

#define DOTS_FOR_M(type)                             \
    switch (mm) {                                    \
    case 1: dots(wb, x, k, 1, type, out); break;     \
    case 2: dots(wb, x, k, 2, type, out); break;     \
    case 3: dots(wb, x, k, 3, type, out); break;     \
    default: dots(wb, x, k, 4, type, out); break;    \
    }

/* Calls of at least this many tokens convert each weight block to a float32 tile first (see
 * gemv); set once at load by native.py, which times both ways on this CPU. */
static int tile_rows = MAX_ROWS + 1;
void utter_set_tile_rows(int rows) { tile_rows = rows < 1 ? 1 : rows; }

/* y[m, n] = x[m, k] @ dequant(w).T for any m: each weight block is read from memory once and
 * used for every token, four at a time. Weights are converted to float lanes on the fly for
 * each group of four tokens, or, for calls of tile_rows tokens or more, once per block into a
 * float32 tile in L1/L2 that every group then reads. Which is faster depends on the CPU (the
 * tile won on the Xeon it was written on; on a Zen 5 converting on the fly is 1.3-1.5x faster
 * at any number of tokens). Both do the same multiply-adds in the same order: the results are
 * bit for bit the same (tests/test_native.py). */
static void gemv(const void *w, const float *scales, int type, const float *xs, float *y, int m, int n, int k) {
    const size_t esize = type == 0 ? 1 : 2, block_bytes = (size_t)BLOCK * k * esize;
#pragma omp parallel
    {
        float *tile = m >= tile_rows ? malloc(sizeof(float) * BLOCK * (size_t)k) : NULL;
        float out[BLOCK][MAX_ROWS];
#pragma omp for schedule(static)
        for (int b = 0; b < n / BLOCK; b++) {
            const char *wb = (const char *)w + (size_t)b * block_bytes;
            int wtype = type;
#if LANES
            if (tile) {
                for (size_t i = 0; i < (size_t)BLOCK * k; i += LANES) VSTORE(tile + i, load_w(wb, i, type));
                wb = (const char *)tile, wtype = 2;
            }
#endif
            for (int j0 = 0; j0 < m; j0 += MAX_ROWS) {
                const int mm = m - j0 < MAX_ROWS ? m - j0 : MAX_ROWS;
                const float *x = xs + (size_t)j0 * k;
                if (wtype == 0) {
                    DOTS_FOR_M(0)
                } else if (wtype == 1) {
                    DOTS_FOR_M(1)
                } else {
                    DOTS_FOR_M(2)
                }
                for (int r = 0; r < BLOCK; r++) {
                    int row = b * BLOCK + r;
                    float s = type == 0 ? scales[row] : 1.0f;
                    for (int j = 0; j < mm; j++) y[(size_t)(j0 + j) * n + row] = out[r][j] * s;
                }
            }
        }
        free(tile);
    }
}

/* Exposed for tests: y[m, n] = x[m, k] @ dequant(w[n, k]).T */
void utter_gemv(const void *w, const float *scales, int type, const float *x, float *y, int m, int n, int k) {
    gemv(w, scales, type, x, y, m, n, k);
}

/* ------------------------------------------------------------------ small ops */
static float dot(const float *a, const float *b, int n) {
    int i = 0;
    float s = 0.0f;
#if LANES
    vec acc0 = VZERO(), acc1 = VZERO();
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
        acc0 = VFMA(VLOAD(a + i), VLOAD(b + i), acc0);
        acc1 = VFMA(VLOAD(a + i + LANES), VLOAD(b + i + LANES), acc1);
    }
    s = vsum(acc0) + vsum(acc1);
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void rms_norm(const float *x, const float *w, float *out, int d, float eps) {
    float ss = dot(x, x, d);
    float inv = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = 0; i < d; i++) out[i] = x[i] * inv * w[i];
}

/* x[i] * cos[i] + rotate_half(x)[i] * signed_sin[i] (sin's first half already negated). */
static void rope(float *x, const float *cos, const float *ssin, int d) {
    float tmp[1024];
    int half = d / 2;
    for (int i = 0; i < half; i++) {
        tmp[i] = x[i] * cos[i] + x[i + half] * ssin[i];
        tmp[i + half] = x[i + half] * cos[i + half] + x[i] * ssin[i + half];
    }
    memcpy(x, tmp, sizeof(float) * d);
}

typedef struct {
    const Stack *s;
    const float *q;  /* [rows * m, heads * head_dim] */
    const float *kc, *vc; /* this layer's cache of row 0: [kv_heads, T, head_dim], rows row_stride apart */
    float *out;      /* [rows * m, heads * head_dim] */
    int rows, m;
    const int32_t *pos; /* [rows]: each row's first position */
    int64_t t, row_stride;
} Attn;

/* Each token of each row attends to its own row's keys 0 .. its position. */
static void attention(const Attn *a) {
    const int hd = a->s->head_dim, heads = a->s->heads, group = heads / a->s->kv_heads;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(static)
    for (int job = 0; job < heads * a->m * a->rows; job++) {
        int token = job / heads, h = job % heads, r = token / a->m, j = token % a->m;
        int len = a->pos[r] + j + 1; /* causal: keys 0 .. pos + j */
        float *p = malloc(sizeof(float) * (size_t)len);
        const float *q = a->q + (size_t)token * heads * hd + (size_t)h * hd;
        const float *kc = a->kc + (size_t)r * a->row_stride + (size_t)(h / group) * a->t * hd;
        const float *vc = a->vc + (size_t)r * a->row_stride + (size_t)(h / group) * a->t * hd;
        float mx = -INFINITY;
        for (int t = 0; t < len; t++) {
            p[t] = dot(q, kc + (size_t)t * hd, hd) * scale;
            if (p[t] > mx) mx = p[t];
        }
        float sum = 0.0f;
        for (int t = 0; t < len; t++) {
            p[t] = expf(p[t] - mx);
            sum += p[t];
        }
        float *o = a->out + (size_t)token * heads * hd + (size_t)h * hd;
        for (int i = 0; i < hd; i++) o[i] = 0.0f;
        for (int t = 0; t < len; t++) {
            float wt = p[t] / sum;
            for (int i = 0; i < hd; i++) o[i] += wt * vc[(size_t)t * hd + i];
        }
        free(p);
    }
}

/* ------------------------------------------------------------------ the stack */
/* Run m consecutive tokens of each of `rows` sequences through every layer: row r's tokens are at
 * positions pos[r] .. pos[r]+m-1 (a decode step: m = 1, or 2 for the code predictor's first; a
 * prefill: any m, right-padded rows included). Every token's arithmetic is the same whatever the
 * other rows (products take each token on its own, see gemv): a row's numbers do not depend on
 * its batch.
 * x: [rows, m, hidden] input embeddings; out: [rows, m, hidden] final-normed hidden states.
 * kc, vc: caches whose (layer l, row r) part [kv_heads, t, head_dim] starts at
 * l * layer_stride + r * row_stride; cos, ssin: rotary tables [>= max pos + m, head_dim].
 * Returns 0, or -1 when m, rows or a size is out of range. */
int utter_stack_run(const Stack *s, const float *x_in, float *out, int rows, int m, float *kc, float *vc,
                    int64_t layer_stride, int64_t row_stride, int64_t t, const int32_t *pos, const float *cos,
                    const float *ssin) {
    const int d = s->hidden, hd = s->head_dim, nq = s->heads * hd, nkv = s->kv_heads * hd;
    const int nqkv = nq + 2 * nkv, inter = s->inter, n = rows * m;
    if (m < 1 || rows < 1 || hd > 1024) return -1;
    for (int r = 0; r < rows; r++)
        if (pos[r] < 0 || pos[r] + m > t) return -1;
    float *x = malloc(sizeof(float) * (size_t)n * d);
    float *h = malloc(sizeof(float) * (size_t)n * (d > nq ? d : nq));
    float *qkv = malloc(sizeof(float) * (size_t)n * nqkv);
    float *att = malloc(sizeof(float) * (size_t)n * nq);
    float *gu = malloc(sizeof(float) * (size_t)n * 2 * inter);
    float *act = malloc(sizeof(float) * (size_t)n * inter);
    float *q = malloc(sizeof(float) * (size_t)n * nq);
    memcpy(x, x_in, sizeof(float) * (size_t)n * d);
    for (int l = 0; l < s->n_layers; l++) {
        const Layer *L = &s->layers[l];
        float *kl = kc + (size_t)l * layer_stride, *vl = vc + (size_t)l * layer_stride;
        for (int j = 0; j < n; j++) rms_norm(x + (size_t)j * d, L->in_norm, h + (size_t)j * d, d, s->eps);
        gemv(L->qkv, L->qkv_s, s->weight_type, h, qkv, n, nqkv, d);
        for (int j = 0; j < n; j++) {
            const int r = j / m, at_pos = pos[r] + j % m;
            float *row = qkv + (size_t)j * nqkv;
            const float *c = cos + (size_t)at_pos * hd, *sn = ssin + (size_t)at_pos * hd;
            for (int hh = 0; hh < s->heads + s->kv_heads; hh++) {
                float *v = row + (size_t)hh * hd;
                rms_norm(v, L->qk_norm + (size_t)hh * hd, v, hd, s->eps);
                rope(v, c, sn, hd);
            }
            memcpy(q + (size_t)j * nq, row, sizeof(float) * nq);
            for (int g = 0; g < s->kv_heads; g++) {
                size_t at = (size_t)r * row_stride + ((size_t)g * t + at_pos) * hd;
                memcpy(kl + at, row + nq + (size_t)g * hd, sizeof(float) * hd);
                memcpy(vl + at, row + nq + nkv + (size_t)g * hd, sizeof(float) * hd);
            }
        }
        Attn a = {s, q, kl, vl, att, rows, m, pos, t, row_stride};
        attention(&a);
        gemv(L->o, L->o_s, s->weight_type, att, h, n, d, nq);
        for (size_t i = 0; i < (size_t)n * d; i++) x[i] += h[i];
        for (int j = 0; j < n; j++) rms_norm(x + (size_t)j * d, L->post_norm, h + (size_t)j * d, d, s->eps);
        gemv(L->gate_up, L->gate_up_s, s->weight_type, h, gu, n, 2 * inter, d);
        for (int j = 0; j < n; j++) {
            const float *g = gu + (size_t)j * 2 * inter, *u = g + inter;
            for (int i = 0; i < inter; i++) act[(size_t)j * inter + i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        }
        gemv(L->down, L->down_s, s->weight_type, act, h, n, d, inter);
        for (size_t i = 0; i < (size_t)n * d; i++) x[i] += h[i];
    }
    for (int j = 0; j < n; j++) rms_norm(x + (size_t)j * d, s->final_norm, out + (size_t)j * d, d, s->eps);
    free(x), free(h), free(qkv), free(att), free(gu), free(act), free(q);
    return 0;
}

/* ------------------------------------------------------------ weight preparation */
/* Load-time work, done once per weight but for every weight of the model: one parallel pass each
 * instead of several full-size tensor ops. */

static inline float source_at(const void *w, int src_type, size_t i) {
    if (src_type == 0) return ((const float *)w)[i];
    uint32_t bits = (uint32_t)((const uint16_t *)w)[i] << 16; /* bfloat16: the top half of a float */
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Symmetric per-row int8 of w [n, k] (float32 when src_type is 0, bfloat16 when 1):
 * scales[r] = max|w[r]| / 127 (at least 1e-12 / 127), q = w / scale rounded half to even (the
 * default rounding mode, as torch.round), within [-127, 127]. */
void utter_quantize_rows(const void *w, int src_type, int64_t n, int64_t k, int8_t *q, float *scales) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; r++) {
        float peak = 0.0f;
        for (int64_t i = 0; i < k; i++) {
            float v = fabsf(source_at(w, src_type, (size_t)(r * k + i)));
            peak = v > peak ? v : peak;
        }
        float scale = (peak > 1e-12f ? peak : 1e-12f) / 127.0f;
        scales[r] = scale;
        for (int64_t i = 0; i < k; i++) {
            float v = nearbyintf(source_at(w, src_type, (size_t)(r * k + i)) / scale);
            q[r * k + i] = (int8_t)(v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v));
        }
    }
}

/* Ask for 2 MiB pages over the whole 2 MiB-aligned middle of a fresh buffer, before it is first
 * written: a weight then takes a few hundred page faults instead of a quarter million, and the
 * decode step's streaming reads miss the TLB far less. Advice only: ignored where unsupported. */
static void advise_huge(void *p, size_t bytes) {
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1), hi = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)p, (void)bytes;
#endif
}

/* The blocked layout of dots(): w [n, k] of esize-byte elements -> [n / BLOCK, k / LANES, BLOCK, LANES]. */
void utter_pack(const void *w, int esize, int64_t n, int64_t k, void *out) {
#if LANES
    advise_huge(out, (size_t)(n * k * esize));
    const int64_t runs = k / LANES;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n / BLOCK; b++)
        for (int64_t i = 0; i < runs; i++)
            for (int r = 0; r < BLOCK; r++)
                memcpy((char *)out + (((b * runs + i) * BLOCK + r) * LANES) * esize,
                       (const char *)w + ((b * BLOCK + r) * k + i * LANES) * esize, (size_t)LANES * esize);
#else
    (void)w, (void)esize, (void)n, (void)k, (void)out;
#endif
}
