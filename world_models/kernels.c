/* Fused CPU kernels for the DiT's inference (world_models/kernels.py builds this file with the
 * system C compiler on first use and calls it through ctypes).
 *
 * Each kernel reads its inputs once and writes its outputs once, where torch runs several
 * elementwise passes (LayerNorm, modulation, residual update; attention's scale, scores,
 * softmax, dtype casts and layout copies) or, at batch 1, several small operations. Arithmetic is
 * float32 whatever the storage: `bf` = 1 stores bfloat16 (uint16, rounded to nearest even as
 * torch does), 0 float32. The inner loops work on 16-float vectors (GCC's vector extensions:
 * one AVX-512 register) with trip counts fixed per instance, so widths are multiples of 16 and the
 * attention kernels have instances for heads of 16, 32 and 64 (kernels.py checks before calling).
 * Units of work (frames, sequence x head, token positions) are split over `threads` OpenMP
 * threads: torch's own runtime where the torch wheel loads libgomp.so.1 (the CPU wheels here
 * do), a second thread pool where it bundles a renamed copy (slower, not wrong). Scratch arrays
 * live on the threads' stacks, sized by the call's shapes, which kernels.py bounds. Callers must
 * pass the shapes documented at each kernel: kernels.py checks them.
 */
#include <math.h>
#include <stdint.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef uint16_t bf16;

static inline float bf2f(bf16 v) {
    union { uint32_t u; float f; } x;
    x.u = (uint32_t)v << 16;
    return x.f;
}

static inline bf16 f2bf(float f) {
    union { uint32_t u; float f; } x;
    x.f = f;
    uint32_t u = x.u;
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (bf16)(((u & 0x7fffffffu) > 0x7f800000u) ? 0x7fc0u : r);  /* NaN stays NaN */
}

static inline void load(float *dst, const void *src, long offset, long n, int bf) {
    if (bf) {
        const bf16 *s = (const bf16 *)src + offset;
        for (long i = 0; i < n; i++) dst[i] = bf2f(s[i]);
    } else {
        const float *s = (const float *)src + offset;
        for (long i = 0; i < n; i++) dst[i] = s[i];
    }
}

static inline void store(void *dst, long offset, const float *src, long n, int bf) {
    if (bf) {
        bf16 *d = (bf16 *)dst + offset;
        for (long i = 0; i < n; i++) d[i] = f2bf(src[i]);
    } else {
        float *d = (float *)dst + offset;
        for (long i = 0; i < n; i++) d[i] = src[i];
    }
}

/* 16-float vectors (GCC vector extensions: AVX-512 registers, or pairs/quads of narrower ones). */
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef uint32_t vu16 __attribute__((vector_size(64)));
typedef uint16_t vh16 __attribute__((vector_size(32)));
#define V 16

/* 16 floats from float32 or bfloat16 storage at src + offset (elements), and back */
static inline v16 vld(const void *src, long offset, int bf) {
    v16 x;
    if (bf) {
        vh16 h;
        __builtin_memcpy(&h, (const bf16 *)src + offset, sizeof h);
        x = (v16)(__builtin_convertvector(h, vu16) << 16);
    } else {
        __builtin_memcpy(&x, (const float *)src + offset, sizeof x);
    }
    return x;
}

/* 16 floats at p (any alignment) */
static inline v16 vload(const float *p) {
    v16 x;
    __builtin_memcpy(&x, p, sizeof x);
    return x;
}

/* bfloat16 bits of 16 floats (in the low half of each lane): round to nearest even, NaN kept */
static inline vu16 vbf_bits(v16 x) {
    vu16 u = (vu16)x;
    vu16 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    vu16 nan = (u & 0x7fffffffu) > 0x7f800000u;
    return (r & ~nan) | (0x7fc0u & nan);
}

/* x rounded to bfloat16, as float32 (what storing and reloading it gives) */
static inline v16 vround_bf(v16 x) {
    return (v16)(vbf_bits(x) << 16);
}

static inline void vst(void *dst, long offset, v16 x, int bf) {
    if (bf) {
#ifdef __AVX512BF16__
        /* one instruction: round to nearest even, NaN kept quiet, as vbf_bits */
        __m256bh h = _mm512_cvtneps_pbh((__m512)x);
#else
        vh16 h = __builtin_convertvector(vbf_bits(x), vh16);
#endif
        __builtin_memcpy((bf16 *)dst + offset, &h, sizeof h);
    } else {
        __builtin_memcpy((float *)dst + offset, &x, sizeof x);
    }
}

/* sum of the 16 lanes by a shuffle tree (4 steps, not 15 dependent adds) */
static inline float hsum(v16 x) {
    x += __builtin_shuffle(x, (vi16){8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    x += __builtin_shuffle(x, (vi16){4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
    x += __builtin_shuffle(x, (vi16){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    x += __builtin_shuffle(x, (vi16){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
    return x[0];
}

static inline v16 vmax(v16 a, v16 b) {
    vi16 gt = a > b;
    return (v16)(((vi16)a & gt) | ((vi16)b & ~gt));
}

/* exp for x <= 0 (softmax after subtracting the maximum), vectorisable: Cephes' expf
 * (range reduction by ln 2 in two parts, degree-5 polynomial), within 2 ulp of expf. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { uint32_t u; float f; } s;
    s.u = (uint32_t)((int32_t)n + 127) << 23;
    return p * s.f;
}

/* y = LayerNorm(x) * (1 + scale) + shift over the last dimension C (no affine weights), with
 * shift/scale per frame: x, y (frames, tokens, C); shift/scale at frame f start at f * mod_stride.
 * When h is given, x is first updated as x + gate * h (the residual update of the sub-layer
 * before) and written to x_out. */
#define INLINE static inline __attribute__((always_inline))
#define LN_ROWS 4
/* Each kernel's body is one unit of work (a frame, a sequence and head, a token position),
 * instantiated once per storage type so that `bf` is a constant and the loops vectorise. */
INLINE void ln_modulate_frame(int bf, long f, const void *x, const void *gate, const void *h, void *x_out,
                              const void *shift, const void *scale, long mod_stride, void *y,
                              long tokens, long C, float eps) {
    const long CV = C / V;  /* whole 16-float vectors; C % 16 == 0 (kernels.py checks) */
    v16 sc[CV], sh[CV], g[CV], row[LN_ROWS * CV];
    for (long i = 0; i < CV; i++) {
        sc[i] = vld(scale, f * mod_stride + i * V, bf) + 1.0f;
        sh[i] = vld(shift, f * mod_stride + i * V, bf);
        g[i] = h ? vld(gate, f * mod_stride + i * V, bf) : sh[i];
    }
    /* LN_ROWS tokens at a time: their reductions and 1/sqrt are independent, so they overlap */
    for (long n0 = 0; n0 < tokens; n0 += LN_ROWS) {
        const long rows = tokens - n0 < LN_ROWS ? tokens - n0 : LN_ROWS;
        float mean[LN_ROWS], rstd[LN_ROWS];
        for (long r = 0; r < rows; r++) {
            const long at = (f * tokens + n0 + r) * C;
            v16 sum = (v16){0};
            for (long i = 0; i < CV; i++) {
                v16 v = vld(x, at + i * V, bf);
                if (h) {
                    v += g[i] * vld(h, at + i * V, bf);
                    vst(x_out, at + i * V, v, bf);
                    if (bf) v = vround_bf(v);  /* normalise the stored (rounded) state */
                }
                row[r * CV + i] = v;
                sum += v;
            }
            mean[r] = hsum(sum) / (float)C;
        }
        for (long r = 0; r < rows; r++) {
            v16 sq = (v16){0};
            for (long i = 0; i < CV; i++) {
                v16 d = row[r * CV + i] - mean[r];
                row[r * CV + i] = d;
                sq += d * d;
            }
            rstd[r] = hsum(sq) / (float)C + eps;
        }
        for (long r = 0; r < rows; r++) rstd[r] = 1.0f / sqrtf(rstd[r]);
        for (long r = 0; r < rows; r++) {
            const long at = (f * tokens + n0 + r) * C;
            for (long i = 0; i < CV; i++) vst(y, at + i * V, row[r * CV + i] * rstd[r] * sc[i] + sh[i], bf);
        }
    }
}

static void ln_modulate_bf16(long f, const void *x, const void *gate, const void *h, void *x_out,
                             const void *shift, const void *scale, long mod_stride, void *y, long tokens,
                             long C, float eps) {
    ln_modulate_frame(1, f, x, gate, h, x_out, shift, scale, mod_stride, y, tokens, C, eps);
}

static void ln_modulate_f32(long f, const void *x, const void *gate, const void *h, void *x_out,
                            const void *shift, const void *scale, long mod_stride, void *y, long tokens,
                            long C, float eps) {
    ln_modulate_frame(0, f, x, gate, h, x_out, shift, scale, mod_stride, y, tokens, C, eps);
}

void ln_modulate(int bf, const void *x, const void *gate, const void *h, void *x_out, const void *shift,
                 const void *scale, long mod_stride, void *y, long frames, long tokens, long C, float eps,
                 int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long f = 0; f < frames; f++) {
        if (bf)
            ln_modulate_bf16(f, x, gate, h, x_out, shift, scale, mod_stride, y, tokens, C, eps);
        else
            ln_modulate_f32(f, x, gate, h, x_out, shift, scale, mod_stride, y, tokens, C, eps);
    }
}

/* exp_neg on 16 lanes (round-to-nearest by the 1.5 * 2^23 trick instead of floor: the same
 * reduced range, |r| <= ln2 / 2) */
static inline v16 vexp_neg_unclamped(v16 x);
static inline v16 vexp_neg(v16 x) {
    const v16 lo = (v16){0} - 87.0f;
    vi16 under = x < lo;
    return vexp_neg_unclamped((v16)(((vi16)x & ~under) | ((vi16)lo & under)));
}

/* exp for x in [-87, 88] */
static inline v16 vexp_neg_unclamped(v16 x) {
    v16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    v16 r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi16 e = (__builtin_convertvector(n, vi16) + 127) << 23;
    return p * (v16)e;
}

/* exp on 16 lanes for any argument (clamped to [-87, 88], where float32's exp under/overflows) */
static inline v16 vexp(v16 x) {
    const v16 hi = (v16){0} + 88.0f;
    vi16 over = x > hi;
    return vexp_neg((v16)(((vi16)x & ~over) | ((vi16)hi & over)));
}

/* GELU, tanh approximation (DiT's), as x * sigmoid(2z) with z = sqrt(2/pi) (x + 0.044715 x^3):
 * the same function, 0.5 (1 + tanh z) = sigmoid(2z). n elements of x into y, in blocks of 4096. */
#define GELU_BLOCK 4096
/* 1 / d: AVX-512's 14-bit reciprocal and one Newton step (~1 ulp), a vector division elsewhere */
static inline v16 vrecip(v16 d) {
#ifdef __AVX512F__
    v16 r = (v16)_mm512_rcp14_ps((__m512)d);
    return r * (2.0f - d * r);
#else
    return 1.0f / d;
#endif
}

INLINE v16 vgelu(v16 x) {
    const float k = 1.5957691216057308f;  /* 2 sqrt(2 / pi) */
    v16 z2 = x * (x * x * (0.044715f * k) + k);
    return x * vrecip(vexp(-z2) + 1.0f);
}

INLINE void gelu_block(int bf, long blk, const void *x, void *y, long n) {
    long start = blk * GELU_BLOCK, end = start + GELU_BLOCK < n ? start + GELU_BLOCK : n, i = start;
    for (; i + V <= end; i += V) vst(y, i, vgelu(vld(x, i, bf)), bf);
    if (i < end) {  /* the tail, through a padded vector */
        float tmp[V] = {0};
        load(tmp, x, i, end - i, bf);
        v16 t = vgelu(vld(tmp, 0, 0));
        __builtin_memcpy(tmp, &t, sizeof tmp);
        store(y, i, tmp, end - i, bf);
    }
}

static void gelu_bf16(long blk, const void *x, void *y, long n) { gelu_block(1, blk, x, y, n); }
static void gelu_f32(long blk, const void *x, void *y, long n) { gelu_block(0, blk, x, y, n); }

void gelu_tanh(int bf, const void *x, void *y, long n, int threads) {
    long blocks = (n + GELU_BLOCK - 1) / GELU_BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long b = 0; b < blocks; b++) {
        if (bf)
            gelu_bf16(b, x, y, n);
        else
            gelu_f32(b, x, y, n);
    }
}

/* Softmax attention of L sequences of S tokens, per head: qkv (L, S, 3, heads, c) as a linear
 * layer leaves it -> out (L, S, heads, c), the layout the output projection reads. S and c are
 * multiples of 16 (kernels.py checks). One unit is a (sequence, head); its queries go 16 at a
 * time, one per lane: the scores of key j for the 16 queries are one vector, sum over channels d
 * of k[j][d] * (channel d of the 16 queries), so the softmax over keys is elementwise across the
 * keys' vectors (no horizontal maximum or sum), and each query's output row is the sum over keys
 * of its probability (a stored scalar) times the key's value row. */

/* channel d of 16 rows `stride` elements apart, starting at src + offset: one gather. For
 * bfloat16 each lane reads 32 bits at the element's address, i.e. 2 bytes past it: safe here,
 * because a query's channel d is always followed by channel d + 1 or by the row's keys. */
static inline v16 vgather(const void *src, long offset, long stride, int bf) {
#ifdef __AVX512F__
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)stride));
    if (bf) /* 32 bits from each bfloat16's address: it is the low half (little endian) */
        return (v16)_mm512_slli_epi32(_mm512_i32gather_epi32(idx, (const bf16 *)src + offset, 2), 16);
    return (v16)_mm512_i32gather_ps(idx, (const float *)src + offset, 4);
#else
    float t[V];
    for (long i = 0; i < V; i++) load(t + i, src, offset + i * stride, 1, bf);
    return vload(t);
#endif
}

INLINE void spatial_attention_unit(int bf, const long SV, const long CV, long lh, const void *qkv, void *out,
                                   long heads) {
    const long S = SV * V, c = CV * V;
    const float scale = 1.0f / sqrtf((float)c);
    const long C = heads * c, row = 3 * C;
    const long l = lh / heads, hd = lh % heads;
    /* k: keys, row-major; val: value rows as vectors; qt[d]: channel d of the block's 16 queries;
     * sc[j] / p[j * V + i]: key j's score / unnormalised probability for query i0 + i; inv[i]: the
     * 1 / sum of query i0 + i, applied when its output row is stored */
    float k[S * c], p[S * V], inv[V];
    v16 val[S * CV], qt[c], sc[S];
    for (long j = 0; j < S; j++) {
        const long base = (l * S + j) * row + hd * c;
        load(k + j * c, qkv, base + C, c, bf);
        for (long cv = 0; cv < CV; cv++) val[j * CV + cv] = vld(qkv, base + 2 * C + cv * V, bf);
    }
    for (long i0 = 0; i0 < S; i0 += V) {
        const long q0 = (l * S + i0) * row + hd * c;
        for (long d = 0; d < c; d++) qt[d] = vgather(qkv, q0 + d, row, bf) * scale;
        v16 m = (v16){0} - INFINITY;
        for (long j = 0; j < S; j++) {
            v16 acc = k[j * c] * qt[0];
            for (long d = 1; d < c; d++) acc += k[j * c + d] * qt[d];
            sc[j] = acc;
            m = vmax(m, acc);
        }
        v16 sum = (v16){0};
        for (long j = 0; j < S; j++) {
            v16 e = vexp_neg(sc[j] - m);
            sum += e;
            __builtin_memcpy(p + j * V, &e, sizeof e);
        }
        v16 r = vrecip(sum);
        __builtin_memcpy(inv, &r, sizeof r);
        for (long i = 0; i < V; i++) {
            v16 o[CV];
            for (long cv = 0; cv < CV; cv++) o[cv] = p[i] * val[cv];
            for (long j = 1; j < S; j++)
                for (long cv = 0; cv < CV; cv++) o[cv] += p[j * V + i] * val[j * CV + cv];
            for (long cv = 0; cv < CV; cv++) vst(out, (l * S + i0 + i) * C + hd * c + cv * V, o[cv] * inv[i], bf);
        }
    }
}

/* one instance per storage type and shape (S, c in 16, 32, 64): constant trip counts keep the
 * accumulators in registers */
typedef void (*spatial_fn)(long, const void *, void *, long);
#define SPATIAL(BF, SV, CV)                                                                    \
    static void spatial_##BF##_##SV##_##CV(long lh, const void *qkv, void *out, long heads) { \
        spatial_attention_unit(BF, SV, CV, lh, qkv, out, heads);                              \
    }
#define SPATIAL_C(BF, SV) SPATIAL(BF, SV, 1) SPATIAL(BF, SV, 2) SPATIAL(BF, SV, 4)
#define SPATIAL_S(BF) SPATIAL_C(BF, 1) SPATIAL_C(BF, 2) SPATIAL_C(BF, 4)
SPATIAL_S(0)
SPATIAL_S(1)
#define ROW_C(BF, SV) {spatial_##BF##_##SV##_1, spatial_##BF##_##SV##_2, 0, spatial_##BF##_##SV##_4}
#define TABLE(BF) {ROW_C(BF, 1), ROW_C(BF, 2), {0, 0, 0, 0}, ROW_C(BF, 4)}
static const spatial_fn SPATIAL_FNS[2][4][4] = {TABLE(0), TABLE(1)};

/* returns 0, or -1 for a shape without an instance (S or c not 16, 32 or 64) */
int spatial_attention(int bf, const void *qkv, void *out, long L, long S, long heads, long c, int threads) {
    long sv = S / V - 1, cv = c / V - 1;
    if (S % V || c % V || sv < 0 || sv > 3 || cv < 0 || cv > 3 || !SPATIAL_FNS[bf != 0][sv][cv]) return -1;
    spatial_fn fn = SPATIAL_FNS[bf != 0][sv][cv];
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long lh = 0; lh < L * heads; lh++) fn(lh, qkv, out, heads);
    return 0;
}

/* Causal attention across frames at each token position and head. qkv (B, T, N, 3, heads, c)
 * as the temporal linear layer leaves it; past keys/values: P frames, frame j's at pk[j] / pv[j]
 * (float32, (Bp, N, heads, c), row b at b * pstride[j]: 0 for a frame every row shares).
 * Frame t sees the P past frames and frames 0..t. out (B, T, N, heads, c); kv_out, when given,
 * receives this call's keys and values in float32, (2, B, T, N, heads, c), for a context cache.
 * c is 16, 32 or 64 (kernels.py checks); one unit is a (row, token position). */

/* The keys and values frame attention's unit (row b, token n) sees: the P past frames in place,
 * then this call's T frames converted to float32 from qkv, straight into the cache when one is
 * kept (kv_out), else into the caller's scratch kc / vc (T x C each). */
INLINE void frame_sources(int bf, long b, long n, const void *qkv, long P, const float *const *pk,
                          const float *const *pv, const long *pstride, float *kv_out, float *kc, float *vc,
                          long B, long T, long N, long C, const float **keys, const float **values) {
    for (long j = 0; j < P; j++) {
        keys[j] = pk[j] + b * pstride[j] + n * C;
        values[j] = pv[j] + b * pstride[j] + n * C;
    }
    for (long t = 0; t < T; t++) {
        float *k = kv_out ? kv_out + ((b * T + t) * N + n) * C : kc + t * C;
        float *v = kv_out ? k + B * T * N * C : vc + t * C;
        long base = ((b * T + t) * N + n) * 3 * C;
        load(k, qkv, base + C, C, bf);
        load(v, qkv, base + 2 * C, C, bf);
        keys[P + t] = k;
        values[P + t] = v;
    }
}

INLINE void frame_attention_unit(int bf, const long CV, long bn, const void *qkv, long P, const float *const *pk,
                                 const float *const *pv, const long *pstride, void *out, float *kv_out,
                                 long B, long T, long N, long heads) {
    const long c = CV * V, C = heads * c, row = 3 * C;
    const float scale = 1.0f / sqrtf((float)c);
    const long b = bn / N, n = bn % N;
    float kc[kv_out ? 1 : T * C], vc[kv_out ? 1 : T * C], qf[C], s[P + T];
    v16 o[CV];
    const float *keys[P + T], *values[P + T];
    frame_sources(bf, b, n, qkv, P, pk, pv, pstride, kv_out, kc, vc, B, T, N, C, keys, values);
    for (long t = 0; t < T; t++) {
        const long seen = P + t + 1, base = ((b * T + t) * N + n);
        load(qf, qkv, base * row, C, bf);
        for (long hd = 0; hd < heads; hd++) {
            const long h0 = hd * c;
            float m = -INFINITY, total = 0.0f;
            for (long j = 0; j < seen; j++) {
                v16 acc = vload(qf + h0) * vload(keys[j] + h0);
                for (long cv = 1; cv < CV; cv++) acc += vload(qf + h0 + cv * V) * vload(keys[j] + h0 + cv * V);
                s[j] = hsum(acc) * scale;
                m = s[j] > m ? s[j] : m;
            }
            for (long j = 0; j < seen; j++) {
                s[j] = exp_neg(s[j] - m);
                total += s[j];
            }
            const float inv = 1.0f / total;
            for (long cv = 0; cv < CV; cv++) o[cv] = vload(values[0] + h0 + cv * V) * (s[0] * inv);
            for (long j = 1; j < seen; j++)
                for (long cv = 0; cv < CV; cv++) o[cv] += vload(values[j] + h0 + cv * V) * (s[j] * inv);
            for (long cv = 0; cv < CV; cv++) vst(out, base * C + h0 + cv * V, o[cv], bf);
        }
    }
}

/* Heads of 16 channels, four at a time: one vector per head, and the four heads' dot products
 * summed together by one shuffle network (8 shuffles) instead of four trees (16); the softmax over
 * the seen frames then runs on vectors whose lanes 0, 4, 8, 12 are the four heads. */
static inline v16 hsum4(v16 a, v16 b, v16 c, v16 d) {
    const vi16 lo = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const vi16 hi = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    v16 ab = __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);  /* a's 8 partials | b's */
    v16 cd = __builtin_shuffle(c, d, lo) + __builtin_shuffle(c, d, hi);
    const vi16 lo4 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const vi16 hi4 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    v16 t = __builtin_shuffle(ab, cd, lo4) + __builtin_shuffle(ab, cd, hi4);  /* 4 partials each */
    t += __builtin_shuffle(t, (vi16){2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    t += __builtin_shuffle(t, (vi16){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
    return t;  /* lane 4h: the sum of the h-th argument */
}

INLINE void frame_attention_unit16(int bf, long bn, const void *qkv, long P, const float *const *pk,
                                   const float *const *pv, const long *pstride, void *out, float *kv_out,
                                   long B, long T, long N, long heads) {
    const long C = heads * V, row = 3 * C;
    const float scale = 0.25f;  /* 1 / sqrt(16) */
    const long b = bn / N, n = bn % N;
    float kc[kv_out ? 1 : T * C], vc[kv_out ? 1 : T * C], qf[C];
    v16 r[P + T];
    const float *keys[P + T], *values[P + T];
    frame_sources(bf, b, n, qkv, P, pk, pv, pstride, kv_out, kc, vc, B, T, N, C, keys, values);
    for (long t = 0; t < T; t++) {
        const long seen = P + t + 1, base = ((b * T + t) * N + n);
        load(qf, qkv, base * row, C, bf);
        for (long h0 = 0; h0 < heads; h0 += 4) {
            const float *q = qf + h0 * V;
            const v16 q0 = vload(q), q1 = vload(q + V), q2 = vload(q + 2 * V), q3 = vload(q + 3 * V);
            v16 m = (v16){0} - INFINITY;
            for (long j = 0; j < seen; j++) {
                const float *k = keys[j] + h0 * V;
                r[j] = hsum4(q0 * vload(k), q1 * vload(k + V), q2 * vload(k + 2 * V), q3 * vload(k + 3 * V)) * scale;
                m = vmax(m, r[j]);
            }
            v16 total = (v16){0};
            for (long j = 0; j < seen; j++) {
                r[j] = vexp_neg(r[j] - m);
                total += r[j];
            }
            const v16 inv = vrecip(total);
            v16 o0 = (v16){0}, o1 = o0, o2 = o0, o3 = o0;
            for (long j = 0; j < seen; j++) {
                const v16 p = r[j] * inv;
                const float *v = values[j] + h0 * V;
                o0 += __builtin_shuffle(p, (vi16){0}) * vload(v);
                o1 += __builtin_shuffle(p, (vi16){0} + 4) * vload(v + V);
                o2 += __builtin_shuffle(p, (vi16){0} + 8) * vload(v + 2 * V);
                o3 += __builtin_shuffle(p, (vi16){0} + 12) * vload(v + 3 * V);
            }
            const long at = base * C + h0 * V;
            vst(out, at, o0, bf);
            vst(out, at + V, o1, bf);
            vst(out, at + 2 * V, o2, bf);
            vst(out, at + 3 * V, o3, bf);
        }
    }
}

static void frame16_bf16(long bn, const void *qkv, long P, const float *const *pk, const float *const *pv,
                         const long *ps, void *out, float *kv, long B, long T, long N, long heads) {
    frame_attention_unit16(1, bn, qkv, P, pk, pv, ps, out, kv, B, T, N, heads);
}

static void frame16_f32(long bn, const void *qkv, long P, const float *const *pk, const float *const *pv,
                        const long *ps, void *out, float *kv, long B, long T, long N, long heads) {
    frame_attention_unit16(0, bn, qkv, P, pk, pv, ps, out, kv, B, T, N, heads);
}

typedef void (*frame_fn)(long, const void *, long, const float *const *, const float *const *, const long *, void *,
                         float *, long, long, long, long);
#define FRAME(BF, CV)                                                                                      \
    static void frame_##BF##_##CV(long bn, const void *qkv, long P, const float *const *pk,                 \
                                  const float *const *pv, const long *ps, void *out, float *kv, long B, long T, \
                                  long N, long heads) {                                                    \
        frame_attention_unit(BF, CV, bn, qkv, P, pk, pv, ps, out, kv, B, T, N, heads);                     \
    }
FRAME(0, 1) FRAME(0, 2) FRAME(0, 4) FRAME(1, 1) FRAME(1, 2) FRAME(1, 4)
static const frame_fn FRAME_FNS[2][4] = {{frame_0_1, frame_0_2, 0, frame_0_4}, {frame_1_1, frame_1_2, 0, frame_1_4}};

/* returns 0, or -1 for heads without an instance (c not 16, 32 or 64) */
int frame_attention(int bf, const void *qkv, long P, const float *const *pk, const float *const *pv,
                    const long *pstride, void *out, float *kv_out, long B, long T, long N, long heads, long c,
                    int threads) {
    long cv = c / V - 1;
    if (c % V || cv < 0 || cv > 3 || !FRAME_FNS[bf != 0][cv]) return -1;
    frame_fn fn = FRAME_FNS[bf != 0][cv];
    if (c == V && heads % 4 == 0) fn = bf ? frame16_bf16 : frame16_f32;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long bn = 0; bn < B * N; bn++) fn(bn, qkv, P, pk, pv, pstride, out, kv_out, B, T, N, heads);
    return 0;
}

/* ---- Matrix kernels on packed weights: the MLP sub-layer with its residual update, and linear
 * layers; in bfloat16 on AVX512-BF16 builds and in float32 everywhere ----
 * The MLP sub-layer: y = x + gate * (W2 gelu(W1 h + b1) + b2) for rows of h (R, C) (LayerNorm'd
 * and modulated), x and y (R, C), all bfloat16 or all float32; the gate per frame (N rows) at
 * f * gstride; b1, b2 float32. W1 (Hd, C) and W2 (C, Hd) come packed by kernels.py: in bfloat16
 * as pairs (K/2, O/16, 16, 2), for input pair p and output vector j 16 lanes of (W[o][2p],
 * W[o][2p + 1]), what AVX512-BF16's vdpbf16ps multiplies with a broadcast pair of inputs,
 * accumulating in float32; in float32 as (K, O/16, 16). A tile of MLP_ROWS rows goes through both
 * layers with its hidden activations (in bfloat16 rounded as torch stores them) in a stack
 * scratch; nothing of size R x Hd is written. C and Hd are multiples of 16 * MLP_OUT (kernels.py
 * checks; the scratch is up to 128 KiB in bf16, 256 KiB in float32, of the calling thread's stack
 * when one thread runs it). Without AVX512-BF16 at build time the bfloat16 calls return -1. */
#define MLP_ROWS 8 /* rows per tile (8 x 2 accumulators: fastest here of 4-16 x 1-4) */
#define MLP_OUT 2  /* output vectors per pass over the inputs */
#ifdef __AVX512BF16__
typedef int32_t vp16 __attribute__((vector_size(64))); /* 16 pairs of bfloat16 */
/* a pair of bfloat16 read as one 32-bit word (bf16 arrays are read through it: may_alias keeps
 * that within C's aliasing rules) */
typedef int32_t bf16_pair __attribute__((may_alias));

/* GELU (tanh form) to ~1e-4 relative (rcp14's 6e-5 the most of it), for results stored in
 * bfloat16 (rounding 2e-3; within 0.6 ulp after rounding, tests/test_kernels.py): x *
 * sigmoid(2z) with exp as 2^n p(r) (degree-4 p, AVX-512's scalef) and 1/d by rcp14 alone. */
static inline v16 vgelu_bf(v16 x) {
    const float k = 1.5957691216057308f; /* 2 sqrt(2 / pi) */
    v16 y = x * (x * x * (-0.044715f * k) - k); /* -2z, clamped where exp under/overflows */
    /* where -2z >= 88 (x below about -8) GELU is 0 to float32 (not x * a denormal 1 / e^88) */
    const __mmask16 zero = _mm512_cmp_ps_mask((__m512)y, _mm512_set1_ps(88.0f), _CMP_GE_OQ);
    y = (v16)_mm512_min_ps(_mm512_max_ps((__m512)y, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.0f));
    v16 n = (v16)_mm512_roundscale_ps((__m512)(y * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v16 r = y - n * 0.6931471805599453f;
    v16 p = r * (1.0f / 24) + (1.0f / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    v16 e = (v16)_mm512_scalef_ps((__m512)p, (__m512)n);
    return (v16)_mm512_mask_mov_ps((__m512)(x * (v16)_mm512_rcp14_ps((__m512)(e + 1.0f))), zero, _mm512_setzero_ps());
}

/* acc[r][j] = sum over P input pairs of in[r][p] * w[p][j0 + j] for MLP_ROWS rows (rows past
 * `rows` repeat row 0: read, never written out) and MLP_OUT output vectors; in has ld pairs per
 * row, w has J output vectors per pair */
INLINE void gemm_bf16(const bf16_pair *in, long ld, long rows, const bf16 *w, long P, long J, long j0, v16 *acc) {
    for (long a = 0; a < MLP_ROWS * MLP_OUT; a++) acc[a] = (v16){0};
    for (long p = 0; p < P; p++) {
        vp16 wv[MLP_OUT];
        for (long j = 0; j < MLP_OUT; j++) __builtin_memcpy(&wv[j], w + ((p * J + j0 + j) * V) * 2, sizeof wv[j]);
        for (long r = 0; r < MLP_ROWS; r++) {
            vp16 pair = (vp16){0} + in[(r < rows ? r : 0) * ld + p];
            for (long j = 0; j < MLP_OUT; j++)
                acc[r * MLP_OUT + j] = (v16)_mm512_dpbf16_ps((__m512)acc[r * MLP_OUT + j], (__m512bh)pair, (__m512bh)wv[j]);
        }
    }
}

#endif

/* The float32 product (any vector ISA): weights packed (K, O/16, 16) floats, one input
 * broadcast per step and a fused multiply-add per output vector; the float32 MLP's GELU is the
 * full-precision one (vgelu). MKL's
 * sgemm for these small-K shapes ran at ~35% of this CPU's float32 peak: the whole MLP of a
 * 300-candidate frame 1.6 vs 6.9 ms for torch's four operations (one core). */
INLINE void gemm_f32(const float *in, long ld, long rows, const float *w, long K, long J, long j0, v16 *acc) {
    for (long a = 0; a < MLP_ROWS * MLP_OUT; a++) acc[a] = (v16){0};
    for (long k = 0; k < K; k++) {
        v16 wv[MLP_OUT];
        for (long j = 0; j < MLP_OUT; j++) wv[j] = vload(w + (k * J + j0 + j) * V);
        for (long r = 0; r < MLP_ROWS; r++) {
            const float a = in[(r < rows ? r : 0) * ld + k];
            for (long j = 0; j < MLP_OUT; j++) acc[r * MLP_OUT + j] += a * wv[j];
        }
    }
}

/* acc for MLP_ROWS rows of `in` (ld elements per row, K inputs) against packed w (J output
 * vectors per input or input pair): the bf16 or the float32 product, bf a constant per instance */
INLINE void tile_product(int bf, const void *in, long ld, long rows, const void *w, long K, long J, long j0,
                         v16 *acc) {
    (void)bf; /* only the bf16 builds have the bf16 product */
#ifdef __AVX512BF16__
    if (bf) {
        gemm_bf16((const bf16_pair *)in, ld / 2, rows, w, K / 2, J, j0, acc);
        return;
    }
#endif
    gemm_f32(in, ld, rows, w, K, J, j0, acc);
}

/* the GELU for the hidden activations: the bf16 kernel's fast one where its results are
 * rounded to bfloat16, the full-precision one in float32 */
INLINE v16 hidden_gelu(int bf, v16 x) {
    (void)bf;
#ifdef __AVX512BF16__
    if (bf) return vgelu_bf(x);
#endif
    return vgelu(x);
}

/* element `at` of a bf16 (bf = 1) or float32 array */
INLINE const void *elem(int bf, const void *p, long at) {
    return bf ? (const void *)((const bf16 *)p + at) : (const void *)((const float *)p + at);
}

INLINE void mlp_tile_body(int bf, long t, long R, long N, long C, long Hd, const void *h, const void *w1,
                          const float *b1, const void *w2, const float *b2, const void *gate, long gstride,
                          const void *x, void *y) {
    const long r0 = t * MLP_ROWS, rows = R - r0 < MLP_ROWS ? R - r0 : MLP_ROWS;
    float hid_f[bf ? 1 : MLP_ROWS * Hd];
    bf16 hid_b[bf ? MLP_ROWS * Hd : 1];
    void *hid = bf ? (void *)hid_b : (void *)hid_f;
    v16 acc[MLP_ROWS * MLP_OUT];
    for (long j0 = 0; j0 < Hd / V; j0 += MLP_OUT) {
        tile_product(bf, elem(bf, h, r0 * C), C, rows, w1, C, Hd / V, j0, acc);
        for (long r = 0; r < MLP_ROWS; r++)
            for (long j = 0; j < MLP_OUT; j++)
                vst(hid, r * Hd + (j0 + j) * V, hidden_gelu(bf, acc[r * MLP_OUT + j] + vload(b1 + (j0 + j) * V)), bf);
    }
    for (long j0 = 0; j0 < C / V; j0 += MLP_OUT) {
        tile_product(bf, hid, Hd, MLP_ROWS, w2, Hd, C / V, j0, acc);
        for (long r = 0; r < rows; r++) {
            const long row = r0 + r, f = row / N;
            for (long j = 0; j < MLP_OUT; j++) {
                const long at = row * C + (j0 + j) * V;
                v16 out = acc[r * MLP_OUT + j] + vload(b2 + (j0 + j) * V);
                vst(y, at, vld(x, at, bf) + vld(gate, f * gstride + (j0 + j) * V, bf) * out, bf);
            }
        }
    }
}

/* y (R, O) = x (R, K) W^T + b, the bias added to the accumulators (torch's addmm for bf16 first
 * copies the bias into every output row: inside the model's two-core call the profiler showed
 * 174 us of it per 4800 x 192 projection; ~30 us alone) */
INLINE void linear_tile_body(int bf, long t, long R, long K, long O, const void *x, const void *w, const float *b,
                             void *y) {
    const long r0 = t * MLP_ROWS, rows = R - r0 < MLP_ROWS ? R - r0 : MLP_ROWS;
    v16 acc[MLP_ROWS * MLP_OUT];
    for (long j0 = 0; j0 < O / V; j0 += MLP_OUT) {
        tile_product(bf, elem(bf, x, r0 * K), K, rows, w, K, O / V, j0, acc);
        for (long r = 0; r < rows; r++)
            for (long j = 0; j < MLP_OUT; j++)
                vst(y, (r0 + r) * O + (j0 + j) * V, acc[r * MLP_OUT + j] + vload(b + (j0 + j) * V), bf);
    }
}

#define MATRIX_TILES(NAME, BF)                                                                           \
    static void mlp_tile_##NAME(long t, long R, long N, long C, long Hd, const void *h, const void *w1,   \
                                const float *b1, const void *w2, const float *b2, const void *gate,       \
                                long gstride, const void *x, void *y) {                                   \
        mlp_tile_body(BF, t, R, N, C, Hd, h, w1, b1, w2, b2, gate, gstride, x, y);                        \
    }                                                                                                    \
    static void linear_tile_##NAME(long t, long R, long K, long O, const void *x, const void *w,          \
                                   const float *b, void *y) {                                             \
        linear_tile_body(BF, t, R, K, O, x, w, b, y);                                                     \
    }
MATRIX_TILES(f32, 0)
#ifdef __AVX512BF16__
MATRIX_TILES(bf16, 1)
#endif

/* y = x W^T + b: bf = 1 bfloat16 x, y and pair-packed W (AVX512-BF16 builds only: else -1),
 * bf = 0 float32 throughout. Returns 0, or -1 for shapes without an instance. */
int linear_packed(int bf, long R, long K, long O, const void *x, const void *w, const float *b, void *y,
                  int threads) {
    if (O % (V * MLP_OUT) || (bf && K % 2)) return -1;
    const long tiles = (R + MLP_ROWS - 1) / MLP_ROWS;
    if (!bf) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (long t = 0; t < tiles; t++) linear_tile_f32(t, R, K, O, x, w, b, y);
        return 0;
    }
#ifdef __AVX512BF16__
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long t = 0; t < tiles; t++) linear_tile_bf16(t, R, K, O, x, w, b, y);
    return 0;
#else
    return -1;
#endif
}

/* the MLP sub-layer with its residual update (above): bf = 1 bfloat16 (AVX512-BF16 builds only:
 * else -1), bf = 0 float32. Returns 0, or -1 for shapes without an instance. */
int mlp_residual(int bf, long R, long N, long C, long Hd, const void *h, const void *w1, const float *b1,
                 const void *w2, const float *b2, const void *gate, long gstride, const void *x, void *y,
                 int threads) {
    if (C % (V * MLP_OUT) || Hd % (V * MLP_OUT) || C > 2048 || Hd > 8192) return -1; /* stack scratch */
    const long tiles = (R + MLP_ROWS - 1) / MLP_ROWS;
    if (!bf) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (long t = 0; t < tiles; t++) mlp_tile_f32(t, R, N, C, Hd, h, w1, b1, w2, b2, gate, gstride, x, y);
        return 0;
    }
#ifdef __AVX512BF16__
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long t = 0; t < tiles; t++) mlp_tile_bf16(t, R, N, C, Hd, h, w1, b1, w2, b2, gate, gstride, x, y);
    return 0;
#else
    (void)gstride;
    return -1;
#endif
}

/* whether this build has the bfloat16 dot-product kernels (mlp_residual and linear_packed with bf = 1) */
int has_bf16_dot(void) {
#ifdef __AVX512BF16__
    return 1;
#else
    return 0;
#endif
}
