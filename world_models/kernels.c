/* Fused CPU kernels for the DiT's memory-bound passes at large batch (world_models/kernels.py
 * builds this file with the system C compiler on first use and calls it through ctypes).
 *
 * Each kernel reads its inputs once and writes its outputs once, where torch runs several
 * elementwise passes over the batch (LayerNorm, modulation, residual update; attention's scale,
 * score, softmax, dtype casts and layout copies). Arithmetic is float32 whatever the storage:
 * `bf` = 1 stores bfloat16 (uint16, round to nearest even as torch does), 0 float32.
 * Rows are split over `threads` OpenMP threads (torch's own runtime: same libgomp soname).
 */
#include <math.h>
#include <stdint.h>

/* Scratch arrays are sized by the call's shapes (kernels.py bounds them: MAX_* there). */

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
/* Each kernel's body is one unit of work (a frame, a sequence and head, a token position),
 * instantiated once per storage type so that `bf` is a constant and the loops vectorise. */
INLINE void ln_modulate_frame(int bf, long f, const void *x, const void *gate, const void *h, void *x_out,
                              const void *shift, const void *scale, long mod_stride, void *y,
                              long tokens, long C, float eps) {
    {
        float sc[C], sh[C], g[C], row[C], hr[C];
        load(sc, scale, f * mod_stride, C, bf);
        load(sh, shift, f * mod_stride, C, bf);
        for (long i = 0; i < C; i++) sc[i] += 1.0f;
        if (h) load(g, gate, f * mod_stride, C, bf);
        for (long n = 0; n < tokens; n++) {
            long at = (f * tokens + n) * C;
            load(row, x, at, C, bf);
            if (h) {
                load(hr, h, at, C, bf);
                for (long i = 0; i < C; i++) row[i] += g[i] * hr[i];
                store(x_out, at, row, C, bf);
                if (bf) load(row, x_out, at, C, bf);  /* normalise the stored (rounded) state */
            }
            float mean = 0.0f, var = 0.0f;
#pragma omp simd reduction(+ : mean)
            for (long i = 0; i < C; i++) mean += row[i];
            mean /= (float)C;
#pragma omp simd reduction(+ : var)
            for (long i = 0; i < C; i++) var += (row[i] - mean) * (row[i] - mean);
            float rstd = 1.0f / sqrtf(var / (float)C + eps);
            for (long i = 0; i < C; i++) row[i] = (row[i] - mean) * rstd * sc[i] + sh[i];
            store(y, at, row, C, bf);
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

/* 16-float vectors (GCC vector extensions: AVX-512 registers, or pairs/quads of narrower ones). */
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
#define V 16

static inline float hsum(v16 x) {
    float s[V], t = 0.0f;
    __builtin_memcpy(s, &x, sizeof s);
    for (int i = 0; i < V; i++) t += s[i];
    return t;
}

static inline float hmax(v16 x) {
    float s[V], t;
    __builtin_memcpy(s, &x, sizeof s);
    t = s[0];
    for (int i = 1; i < V; i++) t = s[i] > t ? s[i] : t;
    return t;
}

/* exp_neg on 16 lanes (round-to-nearest by the 1.5 * 2^23 trick instead of floor: the same
 * reduced range, |r| <= ln2 / 2) */
static inline v16 vexp_neg(v16 x) {
    const v16 lo = x * 0.0f - 87.0f;
    vi16 under = x < lo;
    x = (v16)(((vi16)x & ~under) | ((vi16)lo & under));
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

/* Softmax attention of L sequences of S tokens, per head: qkv (L, S, 3, heads, c) as a linear
 * layer leaves it -> out (L, S, heads, c), the layout the output projection reads. S and c are
 * multiples of 16 (kernels.py checks). Four query rows at a time: independent accumulators. */
#define ROWS 4
INLINE void spatial_attention_unit(int bf, const long SV, const long CV, long lh, const void *qkv, void *out,
                                   long heads) {
    const long S = SV * V, c = CV * V;
    const float scale = 1.0f / sqrtf((float)c);
    const long C = heads * c, row = 3 * C;
    const long l = lh / heads, hd = lh % heads;
    v16 kt[c * SV], v[S * CV], acc[ROWS * SV], o[ROWS * CV];
    float q[S * c], tmp[c], e[ROWS * S];
    float *ktf = (float *)kt;
    for (long j = 0; j < S; j++) {
        long base = (l * S + j) * row + hd * c;
        load(q + j * c, qkv, base, c, bf);
        load(tmp, qkv, base + C, c, bf);
        for (long d = 0; d < c; d++) ktf[d * S + j] = tmp[d];
        load((float *)(v + j * CV), qkv, base + 2 * C, c, bf);
    }
    for (long i0 = 0; i0 < S; i0 += ROWS) {
        for (long a = 0; a < ROWS * SV; a++) acc[a] = (v16){0};
        for (long d = 0; d < c; d++)
            for (long r = 0; r < ROWS; r++) {
                float qd = q[(i0 + r) * c + d] * scale;
                for (long jv = 0; jv < SV; jv++) acc[r * SV + jv] += qd * kt[d * SV + jv];
            }
        for (long r = 0; r < ROWS; r++) {
            float m = hmax(acc[r * SV]);
            for (long jv = 1; jv < SV; jv++) {
                float mj = hmax(acc[r * SV + jv]);
                m = mj > m ? mj : m;
            }
            v16 sum = acc[r * SV] * 0.0f;
            for (long jv = 0; jv < SV; jv++) {
                v16 x = vexp_neg(acc[r * SV + jv] - m);
                sum += x;
                acc[r * SV + jv] = x;
            }
            float inv = 1.0f / hsum(sum);
            for (long jv = 0; jv < SV; jv++) acc[r * SV + jv] *= inv;
        }
        __builtin_memcpy(e, acc, sizeof e);
        for (long a = 0; a < ROWS * CV; a++) o[a] = (v16){0};
        for (long j = 0; j < S; j++)
            for (long r = 0; r < ROWS; r++) {
                float p = e[r * S + j];
                for (long cv = 0; cv < CV; cv++) o[r * CV + cv] += p * v[j * CV + cv];
            }
        for (long r = 0; r < ROWS; r++) store(out, (l * S + i0 + r) * C + hd * c, (float *)(o + r * CV), c, bf);
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
 * receives this call's keys and values in float32, (2, B, T, N, heads, c), for a context cache. */
INLINE void frame_attention_unit(int bf, long bn, const void *qkv, long P, const float *const *pk,
                                 const float *const *pv, const long *pstride, void *out, float *kv_out,
                                 long B, long T, long N, long heads, long c) {
    const float scale = 1.0f / sqrtf((float)c);
    const long C = heads * c, row = 3 * C;
    {
        long b = bn / N, n = bn % N;
        float k[(P + T) * c], v[(P + T) * c], q[c], s[P + T], o[c];
        for (long hd = 0; hd < heads; hd++) {
            for (long j = 0; j < P; j++) {
                const float *kj = pk[j] + b * pstride[j] + n * C + hd * c;
                const float *vj = pv[j] + b * pstride[j] + n * C + hd * c;
                for (long d = 0; d < c; d++) {
                    k[j * c + d] = kj[d];
                    v[j * c + d] = vj[d];
                }
            }
            for (long t = 0; t < T; t++) {
                long base = ((b * T + t) * N + n) * row + hd * c;
                load(k + (P + t) * c, qkv, base + C, c, bf);
                load(v + (P + t) * c, qkv, base + 2 * C, c, bf);
                if (kv_out) {
                    long at = ((b * T + t) * N + n) * C + hd * c;
                    for (long d = 0; d < c; d++) {
                        kv_out[at + d] = k[(P + t) * c + d];
                        kv_out[B * T * N * C + at + d] = v[(P + t) * c + d];
                    }
                }
            }
            for (long t = 0; t < T; t++) {
                long seen = P + t + 1;
                load(q, qkv, ((b * T + t) * N + n) * row + hd * c, c, bf);
                for (long d = 0; d < c; d++) q[d] *= scale;
                float m = -INFINITY;
                for (long j = 0; j < seen; j++) {
                    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
                    for (long d = 0; d < c; d++) dot += q[d] * k[j * c + d];
                    s[j] = dot;
                    m = dot > m ? dot : m;
                }
                float total = 0.0f;
                for (long j = 0; j < seen; j++) {
                    s[j] = exp_neg(s[j] - m);
                    total += s[j];
                }
                float inv = 1.0f / total;
                for (long d = 0; d < c; d++) o[d] = 0.0f;
                for (long j = 0; j < seen; j++) {
                    float p = s[j] * inv;
                    for (long d = 0; d < c; d++) o[d] += p * v[j * c + d];
                }
                store(out, ((b * T + t) * N + n) * C + hd * c, o, c, bf);
            }
        }
    }
}

static void frame_attention_bf16(long bn, const void *qkv, long P, const float *const *pk,
                                 const float *const *pv, const long *pstride, void *out, float *kv_out,
                                 long B, long T, long N, long heads, long c) {
    frame_attention_unit(1, bn, qkv, P, pk, pv, pstride, out, kv_out, B, T, N, heads, c);
}

static void frame_attention_f32(long bn, const void *qkv, long P, const float *const *pk,
                                const float *const *pv, const long *pstride, void *out, float *kv_out,
                                long B, long T, long N, long heads, long c) {
    frame_attention_unit(0, bn, qkv, P, pk, pv, pstride, out, kv_out, B, T, N, heads, c);
}

void frame_attention(int bf, const void *qkv, long P, const float *const *pk, const float *const *pv,
                     const long *pstride, void *out, float *kv_out, long B, long T, long N, long heads, long c,
                     int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long bn = 0; bn < B * N; bn++) {
        if (bf)
            frame_attention_bf16(bn, qkv, P, pk, pv, pstride, out, kv_out, B, T, N, heads, c);
        else
            frame_attention_f32(bn, qkv, P, pk, pv, pstride, out, kv_out, B, T, N, heads, c);
    }
}
