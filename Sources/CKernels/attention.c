#include "attention.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fp8_encode.h"
#include "fp8_kernels.h"

// Same bits at every level: no a·b + c may become a fused multiply-add unless written as one.
#pragma STDC FP_CONTRACT OFF

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// e^x: n = round(x · log2 e) by the 1.5 · 2^23 trick; r = x − n · ln 2 with ln 2 in two parts
// (0.693359375 has few enough bits that n · it is exact, Cephes' C1 and C2); e^r on
// [−ln 2 / 2, ln 2 / 2] by Cephes expf's polynomial (1 + r + r² · p(r), p of degree 5); then
// multiplied by 2^n built in the exponent bits. n = 128 (x just under ln FLT_MAX) is taken as
// 2 · 2^127 so the power stays a normal number. Every step is one f32 operation or a fused
// multiply-add, so the vectorized loops of each level compute the same bits as plain C.
static inline float exp_one(float x) {
    const float lowest = -87.33654475f;  // ln 2^-126: below, e^x is subnormal and taken as 0
    const float highest = 88.72283905f;  // ln FLT_MAX: above, +Inf
    float xc = x < lowest ? lowest : (x > highest ? highest : x);
    xc = x == x ? xc : 0.0f;
    float t = fmaf(xc, 1.44269504088896341f, 12582912.0f);
    float n = t - 12582912.0f;
    float r = fmaf(n, -0.693359375f, xc);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    float e = fmaf(p, r * r, r + 1.0f);
    int top = n > 127.0f;
    e = top ? e * 2.0f : e;
    int32_t k = (int32_t)(top ? 127.0f : n);
    float power = dsconvert_float_of((uint32_t)(k + 127) << 23);
    float y = e * power;
    y = x < lowest ? 0.0f : (x > highest ? INFINITY : y);
    return x == x ? y : x;
}

// Each element is read before its own output is written, so `out` may be an input: the loops carry
// no dependence, which the pragma tells the vectorizer (its overlap check would otherwise take the
// scalar loop whenever out is x).
#define DEFINE_EXP(NAME, ATTRIBUTES)                                                                   \
    ATTRIBUTES static void NAME(const float *x, float *out, size_t count) {                              \
        _Pragma("clang loop vectorize(assume_safety)") for (size_t i = 0; i < count; i++) out[i] = exp_one(x[i]); \
    }                                                                                                    \
    ATTRIBUTES static void NAME##_silu_mul(const float *gate, const float *up, float *out, size_t count) { \
        _Pragma("clang loop vectorize(assume_safety)") for (size_t i = 0; i < count; i++)                  \
            out[i] = gate[i] / (1.0f + exp_one(-gate[i])) * up[i];                                       \
    }

DEFINE_EXP(exp_baseline, )
#if defined(__x86_64__)
DEFINE_EXP(exp_avx2, __attribute__((target("avx2,fma"))))
DEFINE_EXP(exp_avx512, __attribute__((target("avx512f,avx512dq"))))
#endif

// c[i * ldc + j] = Σ_k a[i * lda + k] · b(k, j) for i < mr, j < nc, one fused multiply-add per k in
// increasing k from 0: the products of both the scores (a = queries, b = the keys transposed) and
// the context (a = probabilities, b = values). b is packed in panels of 16 columns: b(k, j) is
// b[j / 16 * ldp + k * 16 + j % 16], so a tile reads one 64-byte line per k, one after another (a
// row-major b put the k a tile reads a whole row apart: 192 lines of a V3 head's keys on ~96 pages,
// more than the first-level TLB holds). Panels are 64-byte aligned and zero-padded to 16 columns;
// only c's first nc columns are written.
enum { ATT_MR = 12, ATT_NV = 2, LANES = 16 };

#define DEFINE_TILE(NAME, ATTRIBUTES)                                                                           \
    ATTRIBUTES static void NAME(size_t mr, size_t nc, const float *a, size_t lda, const float *b, size_t ldp,      \
                                size_t kc, float *c, size_t ldc) {                                               \
        float acc[ATT_MR][ATT_NV * LANES];                                                                       \
        size_t width = (nc + LANES - 1) / LANES * LANES;                                                         \
        for (size_t i = 0; i < mr; i++)                                                                          \
            for (size_t j = 0; j < width; j++) acc[i][j] = 0.0f;                                                 \
        for (size_t k = 0; k < kc; k++) {                                                                        \
            for (size_t i = 0; i < mr; i++) {                                                                    \
                float ai = a[i * lda + k];                                                                       \
                for (size_t j = 0; j < width; j++)                                                               \
                    acc[i][j] = fmaf(ai, b[j / LANES * ldp + k * LANES + j % LANES], acc[i][j]);                 \
            }                                                                                                    \
        }                                                                                                        \
        for (size_t i = 0; i < mr; i++) memcpy(c + i * ldc, acc[i], nc * sizeof(float));                         \
    }

// Without FMA hardware (the baseline level) each fmaf is a libm call: correct, and slow.
DEFINE_TILE(tile_baseline, )
#if defined(__x86_64__)

// The AVX2 tile: up to 6 rows by 16 columns (two ymm) in registers, 12 accumulators, per k 2 vectors
// of b and 6 broadcasts of a; the whole tile (up to 12 x 32) is taken in such blocks. The generic
// tile at AVX2 kept its 12 x 32 sums in memory (48 ymm against 16 registers), a load and a store
// per fused multiply-add. Each output is the same chain in increasing k: the same bits.
__attribute__((target("avx2,fma"), always_inline)) static inline void tile256(const size_t MR_, size_t nc, const float *a, size_t lda,
                                                                               const float *b, size_t ldp, size_t kc, float *c, size_t ldc) {
    __m256 s[6][2];
    _Pragma("clang loop unroll(full)") for (size_t i = 0; i < MR_; i++)
        _Pragma("clang loop unroll(full)") for (size_t v = 0; v < 2; v++) s[i][v] = _mm256_setzero_ps();
    for (size_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b + k * LANES), b1 = _mm256_load_ps(b + k * LANES + 8);
        _Pragma("clang loop unroll(full)") for (size_t i = 0; i < MR_; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i * lda + k);
            s[i][0] = _mm256_fmadd_ps(ai, b0, s[i][0]);
            s[i][1] = _mm256_fmadd_ps(ai, b1, s[i][1]);
        }
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (size_t v = 0; v < 2; v++) {
        if (v * 8 >= nc) break;
        size_t left = nc - v * 8;
        __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(left >= 8 ? 8 : (int)left), lane);
        for (size_t i = 0; i < MR_; i++) _mm256_maskstore_ps(c + i * ldc + v * 8, mask, s[i][v]);
    }
}

__attribute__((target("avx2,fma"))) static void tile_avx2(size_t mr, size_t nc, const float *a, size_t lda, const float *b, size_t ldp,
                                                          size_t kc, float *c, size_t ldc) {
    for (size_t j0 = 0; j0 < nc; j0 += 16) {
        size_t n = nc - j0 < 16 ? nc - j0 : 16;
        for (size_t i0 = 0; i0 < mr; i0 += 6) {
            const float *ai = a + i0 * lda;
            float *ci = c + i0 * ldc + j0;
            const float *bp = b + j0 / LANES * ldp;
            switch (mr - i0 < 6 ? mr - i0 : 6) {
            case 6: tile256(6, n, ai, lda, bp, ldp, kc, ci, ldc); break;
            case 5: tile256(5, n, ai, lda, bp, ldp, kc, ci, ldc); break;
            case 4: tile256(4, n, ai, lda, bp, ldp, kc, ci, ldc); break;
            case 3: tile256(3, n, ai, lda, bp, ldp, kc, ci, ldc); break;
            case 2: tile256(2, n, ai, lda, bp, ldp, kc, ci, ldc); break;
            default: tile256(1, n, ai, lda, bp, ldp, kc, ci, ldc); break;
            }
        }
    }
}

// The AVX-512 tile: MR_ rows by NV_ vectors of 16 columns in registers (24 of 32 zmm at 12 x 2). Per
// k it loads NV_ vectors of b (one line of each of NV_ panels) and broadcasts MR_ values of a (rows
// the tile reuses for 16 k from the first level): at 4 x 6 that was 6 vectors for 24 products. 12 x 2
// measured 17% faster in an -O3 harness on an Intel host (V3's 128 heads, 512 positions; 4 x 4, 6 x 4,
// 8 x 3 and 14 x 2 between) and level with 4 x 6 in the forward pass on a Zen 5 host, once unrolled
// (below). Each output is its own chain of fused multiply-adds in increasing k whatever the tile, so
// the bits do not change.
// The AVX-512 tile's target. `scripts/attention-avx512-emulation.sh` builds this file with
// DSCONVERT_EMULATE_AVX512 and the tile's few intrinsics as plain C, one fmaf a lane, so a host without
// AVX-512 checks the tile's addressing and bits against the other levels; the level's exp, softmax
// and key pack then come from AVX2, or plain C on a CPU without it (the same bits).
#ifdef DSCONVERT_EMULATE_AVX512
#define AVX512_TILE_TARGET
#else
#define AVX512_TILE_TARGET __attribute__((target("avx512f")))
#endif

AVX512_TILE_TARGET __attribute__((always_inline)) static inline void tile512(const size_t MR_, const size_t NV_, size_t nc, const float *a,
                                                                              size_t lda, const float *b, size_t ldp, size_t kc, float *c,
                                                                              size_t ldc) {
    // The loops over rows and vectors are unrolled whole, so the sums live in registers: at the
    // package's optimization level (-O2) the compiler's own limit left 12 x 2 rolled, in memory.
    __m512 s[ATT_MR][ATT_NV];
    _Pragma("clang loop unroll(full)") for (size_t i = 0; i < MR_; i++)
        _Pragma("clang loop unroll(full)") for (size_t v = 0; v < NV_; v++) s[i][v] = _mm512_setzero_ps();
    for (size_t k = 0; k < kc; k++) {
        __m512 bv[ATT_NV];
        _Pragma("clang loop unroll(full)") for (size_t v = 0; v < NV_; v++) bv[v] = _mm512_load_ps(b + v * ldp + k * LANES);
        _Pragma("clang loop unroll(full)") for (size_t i = 0; i < MR_; i++) {
            __m512 ai = _mm512_set1_ps(a[i * lda + k]);
            _Pragma("clang loop unroll(full)") for (size_t v = 0; v < NV_; v++) s[i][v] = _mm512_fmadd_ps(ai, bv[v], s[i][v]);
        }
    }
    for (size_t i = 0; i < MR_; i++)
        for (size_t v = 0; v < NV_; v++) {
            size_t left = nc - v * LANES;
            __mmask16 mask = left >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
            _mm512_mask_storeu_ps(c + i * ldc + v * LANES, mask, s[i][v]);
        }
}

#define TILE_ROWS(MR_)                                                                                  \
    switch ((nc + LANES - 1) / LANES) {                                                                 \
    case 2: tile512(MR_, 2, nc, a, lda, b, ldp, kc, c, ldc); break;                                     \
    default: tile512(MR_, 1, nc, a, lda, b, ldp, kc, c, ldc); break;                                    \
    }

AVX512_TILE_TARGET static void tile_avx512(size_t mr, size_t nc, const float *a, size_t lda, const float *b, size_t ldp,
                                                            size_t kc, float *c, size_t ldc) {
    switch (mr) {
    case 12: TILE_ROWS(12) break;
    case 11: TILE_ROWS(11) break;
    case 10: TILE_ROWS(10) break;
    case 9: TILE_ROWS(9) break;
    case 8: TILE_ROWS(8) break;
    case 7: TILE_ROWS(7) break;
    case 6: TILE_ROWS(6) break;
    case 5: TILE_ROWS(5) break;
    case 4: TILE_ROWS(4) break;
    case 3: TILE_ROWS(3) break;
    case 2: TILE_ROWS(2) break;
    default: TILE_ROWS(1) break;
    }
}
#endif

typedef void (*tile_fn)(size_t, size_t, const float *, size_t, const float *, size_t, size_t, float *, size_t);
typedef void (*softmax_fn)(float *, size_t, size_t, float);

// c[m, n] = a[m, k] · b[k, n] by tiles of ATT_MR rows x ATT_NV · 16 columns.
static void product(tile_fn tile, size_t m, size_t n, const float *a, size_t lda, const float *b, size_t ldp, size_t kc, float *c,
                    size_t ldc) {
    for (size_t j0 = 0; j0 < n; j0 += ATT_NV * LANES) {
        size_t nc = n - j0 < ATT_NV * LANES ? n - j0 : ATT_NV * LANES;
        for (size_t i0 = 0; i0 < m; i0 += ATT_MR) {
            size_t mr = m - i0 < ATT_MR ? m - i0 : ATT_MR;
            tile(mr, nc, a + i0 * lda, lda, b + j0 / LANES * ldp, ldp, kc, c + i0 * ldc + j0, ldc);
        }
    }
}

// One row of scores in place: scale, subtract the maximum of the first `valid`, e^x, then the f64
// lane sums, p = e · (1 / sum) rounded to f32 once; entries from `valid` to `width` become 0. Written
// lane by lane so each level's vectorizer widens it without reordering a sum. (Taking e^x and the
// sums in one pass made the head 7% slower: the vectorizer widened the fused loop less well.)
#define DEFINE_SOFTMAX(NAME, ATTRIBUTES)                                                            \
    ATTRIBUTES static void NAME(float *row, size_t valid, size_t width, float scale) {                     \
        float most[LANES];                                                                                 \
        for (size_t l = 0; l < LANES; l++) most[l] = -INFINITY;                                            \
        size_t j = 0;                                                                                      \
        for (; j + LANES <= valid; j += LANES)                                                             \
            for (size_t l = 0; l < LANES; l++) {                                                           \
                float value = row[j + l] * scale;                                                          \
                row[j + l] = value;                                                                        \
                most[l] = value > most[l] ? value : most[l];                                               \
            }                                                                                              \
        for (size_t l = 0; j + l < valid; l++) {                                                           \
            float value = row[j + l] * scale;                                                              \
            row[j + l] = value;                                                                            \
            most[l] = value > most[l] ? value : most[l];                                                   \
        }                                                                                                  \
        float m = most[0];                                                                                 \
        for (size_t l = 1; l < LANES; l++) m = most[l] > m ? most[l] : m;                                  \
        _Pragma("clang loop vectorize(assume_safety)") for (size_t i = 0; i < valid; i++) row[i] = exp_one(row[i] - m); \
        double lanes[LANES] = {0};                                                                         \
        for (j = 0; j + LANES <= valid; j += LANES)                                                        \
            for (size_t l = 0; l < LANES; l++) lanes[l] += (double)row[j + l];                             \
        for (size_t l = 0; j + l < valid; l++) lanes[l] += (double)row[j + l];                             \
        for (size_t half = LANES / 2; half > 0; half /= 2)                                                 \
            for (size_t l = 0; l < half; l++) lanes[l] += lanes[l + half];                                 \
        float inv = (float)(1.0 / lanes[0]);                                                               \
        for (j = 0; j < valid; j++) row[j] *= inv;                                                         \
        for (j = valid; j < width; j++) row[j] = 0.0f;                                                     \
    }

DEFINE_SOFTMAX(softmax_baseline, )
#if defined(__x86_64__)
DEFINE_SOFTMAX(softmax_avx2, __attribute__((target("avx2,fma"))))
DEFINE_SOFTMAX(softmax_avx512, __attribute__((target("avx512f,avx512dq"))))
#endif

// A head's keys transposed in panels of 16 keys, kt[j / 16 * 16 * dq + d * 16 + j % 16] (b of the
// scores' product); keys from `seq` to `padded` are zero.
static void pack_keys(size_t seq, size_t padded, dsconvert_rows k1, dsconvert_rows k2, float *kt) {
    size_t dq = k1.width + k2.width;
    for (size_t j0 = 0; j0 < padded; j0 += LANES)
        for (size_t d = 0; d < dq; d++) {
            const float *src = d < k1.width ? k1.data + d : k2.data + (d - k1.width);
            size_t ld = d < k1.width ? k1.ld : k2.ld;
            float *panel = kt + j0 * dq + d * LANES;
            for (size_t l = 0; l < LANES; l++) panel[l] = j0 + l < seq ? src[(j0 + l) * ld] : 0.0f;
        }
}

// A head's values in panels of 16 columns, vp[c / 16 * 16 * padded + j * 16 + c % 16] (b of the
// context's product); keys from `seq` to `padded` and columns from v.width to dvp are zero.
static void pack_values(size_t seq, size_t padded, size_t dvp, dsconvert_rows v, float *vp) {
    for (size_t c0 = 0; c0 < dvp; c0 += LANES)
        for (size_t j = 0; j < padded; j++) {
            float *panel = vp + c0 * padded + j * LANES;
            if (j < seq && c0 + LANES <= v.width) {
                memcpy(panel, v.data + j * v.ld + c0, LANES * sizeof(float));
                continue;
            }
            for (size_t l = 0; l < LANES; l++) panel[l] = j < seq && c0 + l < v.width ? v.data[j * v.ld + c0 + l] : 0.0f;
        }
}

#if defined(__x86_64__)
// Elements d..d+7 of 8 consecutive keys (rows of `src`, `ld` apart) transposed into 8 rows of a keys'
// panel (16 floats apart, 32-byte aligned): 24 shuffles for 64 floats, where the scalar pack took a
// strided load per float (a tenth of a V3 head's time).
__attribute__((target("avx2"))) static inline void transpose8(const float *src, size_t ld, float *dst) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ld), r2 = _mm256_loadu_ps(src + 2 * ld), r3 = _mm256_loadu_ps(src + 3 * ld);
    __m256 r4 = _mm256_loadu_ps(src + 4 * ld), r5 = _mm256_loadu_ps(src + 5 * ld), r6 = _mm256_loadu_ps(src + 6 * ld), r7 = _mm256_loadu_ps(src + 7 * ld);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5), t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE), u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE), u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_store_ps(dst + 0 * LANES, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_store_ps(dst + 1 * LANES, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_store_ps(dst + 2 * LANES, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_store_ps(dst + 3 * LANES, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_store_ps(dst + 4 * LANES, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_store_ps(dst + 5 * LANES, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_store_ps(dst + 6 * LANES, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_store_ps(dst + 7 * LANES, _mm256_permute2f128_ps(u3, u7, 0x31));
}

__attribute__((target("avx2"))) static void pack_keys_avx2(size_t seq, size_t padded, dsconvert_rows k1, dsconvert_rows k2, float *kt) {
    size_t dq = k1.width + k2.width;
    for (size_t j0 = 0; j0 < padded; j0 += 8) {
        float *panel = kt + j0 / LANES * LANES * dq + j0 % LANES;
        for (size_t part = 0; part < 2; part++) {
            dsconvert_rows k = part == 0 ? k1 : k2;
            size_t first = part == 0 ? 0 : k1.width, d = 0;
            if (j0 + 8 <= seq)
                for (; d + 8 <= k.width; d += 8) transpose8(k.data + j0 * k.ld + d, k.ld, panel + (first + d) * LANES);
            for (; d < k.width; d++)
                for (size_t l = 0; l < 8; l++) panel[(first + d) * LANES + l] = j0 + l < seq ? k.data[(j0 + l) * k.ld + d] : 0.0f;
        }
    }
}
#endif

// Every kernel of this file at one instruction-set level, chosen in one place.
typedef struct {
    void (*exp)(const float *, float *, size_t);
    void (*silu_mul)(const float *, const float *, float *, size_t);
    tile_fn tile;
    softmax_fn softmax;
    void (*pack_keys)(size_t, size_t, dsconvert_rows, dsconvert_rows, float *);
} level_kernels;

static level_kernels kernels_for(int isa) {
#if defined(__x86_64__)
#ifdef DSCONVERT_EMULATE_AVX512
    if (isa >= DSCONVERT_ISA_AVX512) {
        level_kernels emulated = kernels_for(__builtin_cpu_supports("avx2") ? DSCONVERT_ISA_AVX2 : DSCONVERT_ISA_BASELINE);
        emulated.tile = tile_avx512;
        return emulated;
    }
#else
    if (isa >= DSCONVERT_ISA_AVX512) return (level_kernels){exp_avx512, exp_avx512_silu_mul, tile_avx512, softmax_avx512, pack_keys_avx2};
#endif
    if (isa == DSCONVERT_ISA_AVX2 && dsconvert_cpu_has_fma()) return (level_kernels){exp_avx2, exp_avx2_silu_mul, tile_avx2, softmax_avx2, pack_keys_avx2};
#else
    (void)isa;
#endif
    return (level_kernels){exp_baseline, exp_baseline_silu_mul, tile_baseline, softmax_baseline, pack_keys};
}

void dsconvert_exp(int isa, const float *x, float *out, size_t count) { kernels_for(isa).exp(x, out, count); }

void dsconvert_silu_mul(int isa, const float *gate, const float *up, float *out, size_t count) {
    kernels_for(isa).silu_mul(gate, up, out, count);
}

int dsconvert_causal_attention(int isa, size_t seq, size_t block, dsconvert_rows q, dsconvert_rows k1, dsconvert_rows k2,
                               dsconvert_rows v, float scale, float *out, size_t ldo) {
    if (seq == 0) return 0;
    if (block == 0) block = seq;
    level_kernels kernels = kernels_for(isa);
    tile_fn tile = kernels.tile;
    softmax_fn softmax = kernels.softmax;
    size_t dq = k1.width + k2.width, padded = (seq + LANES - 1) / LANES * LANES;
    size_t dv = v.width, dvp = (dv + LANES - 1) / LANES * LANES, rows = block < seq ? block : seq;
    // The keys transposed and the values, in panels of 16 columns (`product`), zero-padded so the
    // tiles read whole vectors; a block's scores [rows][padded]. Both sizes are whole 64-byte lines,
    // as aligned_alloc asks, and never 0 (one more row of panels: no keys' or values' width may be 0,
    // and a request of 0 bytes may return NULL).
    float *kt = aligned_alloc(64, (dq + 1) * padded * sizeof(float));
    float *vp = aligned_alloc(64, (dvp + 1) * padded * sizeof(float));
    float *scores = malloc((rows * padded + 1) * sizeof(float));
    if (!kt || !vp || !scores) {
        free(kt);
        free(vp);
        free(scores);
        return 2;
    }
    kernels.pack_keys(seq, padded, k1, k2, kt);
    pack_values(seq, padded, dvp, v, vp);
    for (size_t q0 = 0; q0 < seq; q0 += block) {
        size_t q1 = seq - q0 < block ? seq : q0 + block, m = q1 - q0, seen = (q1 + LANES - 1) / LANES * LANES;
        product(tile, m, seen, q.data + q0 * q.ld, q.ld, kt, dq * LANES, dq, scores, padded);
        for (size_t r = 0; r < m; r++) softmax(scores + r * padded, q0 + r + 1, seen, scale);
        product(tile, m, dv, scores, padded, vp, padded * LANES, seen, out + q0 * ldo, ldo);
    }
    free(kt);
    free(vp);
    free(scores);
    return 0;
}
