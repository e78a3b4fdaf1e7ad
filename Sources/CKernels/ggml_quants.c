// llama.cpp's reference block quantizers, reimplemented from their documented algorithms. Every
// operation is a separate f32 rounding in source order (no fused multiply-add): the bytes must be
// those of ggml's C reference built for a CPU without FMA.
#include "ggml_quants.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#pragma STDC FP_CONTRACT OFF

uint16_t dsconvert_f32_to_f16(float x) {
    uint32_t bits; memcpy(&bits, &x, 4);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t magnitude = bits & 0x7FFFFFFFu;
    if (magnitude > 0x7F800000u) return sign | 0x7E00u;                 // NaN
    if (magnitude >= 0x477FF000u) return sign | 0x7C00u;                // rounds to ≥ 65520: inf
    if (magnitude >= 0x38800000u) {                                     // normal in f16 (≥ 2^-14)
        uint32_t rounded = magnitude + 0xFFFu + ((magnitude >> 13) & 1u);
        return sign | (uint16_t)((rounded >> 13) - (112u << 10));
    }
    // Subnormal or zero: the value in units of 2^-24, rounded to nearest even (exact in f32 arithmetic:
    // |x| · 2^24 < 1024 and adding 2^23 leaves the unit in the last place 1).
    float scaled; uint32_t m = magnitude; memcpy(&scaled, &m, 4);
    float shifted = scaled * 0x1p24f + 0x1p23f;
    uint32_t sbits; memcpy(&sbits, &shifted, 4);
    return sign | (uint16_t)(sbits - 0x4B000000u);
}

float dsconvert_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    float value;
    if (exponent == 0) value = (float)mantissa * 0x1p-24f;
    else if (exponent == 31) { uint32_t b = 0x7F800000u | (mantissa << 13); memcpy(&value, &b, 4); }
    else { uint32_t b = ((exponent + 112u) << 23) | (mantissa << 13); memcpy(&value, &b, 4); }
    uint32_t vb; memcpy(&vb, &value, 4); vb |= sign; memcpy(&value, &vb, 4);
    return value;
}

// Round to nearest, ties to even, for |f| ≤ 2^22: adding 1.5 · 2^23 leaves an integer in the mantissa.
static inline int nearest_int(float f) {
    float v = f + 12582912.0f;
    int32_t i; memcpy(&i, &v, 4);
    return (i & 0x007FFFFF) - 0x00400000;
}

static inline void store_f16(uint8_t *p, float x) { uint16_t h = dsconvert_f32_to_f16(x); p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); }

// q8_0: per 32 values d = absmax / 127 (fp16), codes roundf(x / d) (half away from zero), computed
// with the f32 reciprocal of the unrounded d.
void dsconvert_quantize_q8_0(const float *x, uint8_t *out, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) { float a = fabsf(x[j]); amax = amax > a ? amax : a; }
        float d = amax / 127;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_f16(out, d);
        for (int j = 0; j < 32; ++j) out[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

// q5_0: per 32 values d = (the value of largest magnitude) / -16, codes trunc(x / d + 16.5) capped at
// 31; low 4 bits of values j and j+16 share byte j, the fifth bits go to a 32-bit word.
void dsconvert_quantize_q5_0(const float *x, uint8_t *out, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 22) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; ++j) { if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; } }
        float d = max / -16;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_f16(out, d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
            float x0 = x[j] * id, x1 = x[j + 16] * id;
            int8_t i0 = (int8_t)(x0 + 16.5f), i1 = (int8_t)(x1 + 16.5f);
            uint8_t q0 = (uint8_t)(i0 < 31 ? i0 : 31), q1 = (uint8_t)(i1 < 31 ? i1 : 31);
            out[6 + j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)((q0 & 0x10) >> 4) << j;
            qh |= (uint32_t)((q1 & 0x10) >> 4) << (j + 16);
        }
        for (int k = 0; k < 4; ++k) out[2 + k] = (uint8_t)(qh >> (8 * k));
    }
}

static int simd_level(void);

static inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Scale and min (x ≈ scale · l − min, l in 0…nmax) of least weighted squared error: the plain
// min/max grid, then nstep + 1 grids of iscale (rmin + rdelta · k + nmax) / (max − min), each refit
// by weighted least squares (a positive min clamped to zero); the best grid's codes stay in L.
static float qkx2(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min, uint8_t *Laux,
                  float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float wi = w[i];
        sum_w += wi;
        sum_x += wi * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax);
        L[i] = (uint8_t)l;
        float diff = scale * l + min - x[i];
        diff = diff * diff;
        best_error += w[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            float wl = w[i] * l;
            sum_l += wl;
            sum_l2 += wl * l;
            sum_xl += wl * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = diff * diff;
                cur_error += w[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

// The 6-bit scale and min of sub-block j from q4_K's 12 packed bytes.
static inline void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// The 8 sub-blocks' scales and mins of a q4_K super-block (weights av_x + |x|), their codes in L.
static void q4k_search_scalar(const float *x, uint8_t *L, float *scales, float *mins) {
    uint8_t Laux[32];
    float weights[32];
    for (int j = 0; j < 8; ++j) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(xs[l]);
        scales[j] = qkx2(32, 15, xs, weights, L + 32 * j, &mins[j], Laux, -1.0f, 0.1f, 20);
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

// The vectorized q4_K searches, from one template (q4k_search_simd.inc): `q4k_search_avx2` (8 sub-blocks, one
// super-block, in AVX2 lanes) and `q4k_search2_avx512` (16 sub-blocks, two consecutive super-blocks).
#define Q4K_NAME q4k_search_avx2
#define Q4K_TARGET "avx2"
#define LANES 8
#define VF __m256
#define VI __m256i
#define VM __m256
#define LANE_OFFSETS _mm256_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224)
#define GATHER(p, offsets) _mm256_i32gather_ps((p), (offsets), 4)
#define F_SET1 _mm256_set1_ps
#define F_ADD _mm256_add_ps
#define F_SUB _mm256_sub_ps
#define F_MUL _mm256_mul_ps
#define F_DIV _mm256_div_ps
#define F_SQRT _mm256_sqrt_ps
#define F_ABS(v) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (v))
#define F_LT(a, b) _mm256_cmp_ps((a), (b), _CMP_LT_OQ)
#define F_GT(a, b) _mm256_cmp_ps((a), (b), _CMP_GT_OQ)
#define F_EQ(a, b) _mm256_cmp_ps((a), (b), _CMP_EQ_OQ)
#define F_SELECT(m, a, b) _mm256_blendv_ps((a), (b), (m))
#define F_AS_I _mm256_castps_si256
#define F_STORE _mm256_storeu_ps
#define I_SET1 _mm256_set1_epi32
#define I_SUB _mm256_sub_epi32
#define I_AND _mm256_and_si256
#define I_MIN _mm256_min_epi32
#define I_MAX _mm256_max_epi32
#define I_TO_F _mm256_cvtepi32_ps
#define I_SELECT(m, a, b) _mm256_blendv_epi8((a), (b), _mm256_castps_si256(m))
#define I_STORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define M_NONE(m) (_mm256_movemask_ps(m) == 0)
#define M_AND _mm256_and_ps
#include "q4k_search_simd.inc"

#define Q4K_NAME q4k_search2_avx512
#define Q4K_TARGET "avx512f"
#define LANES 16
#define VF __m512
#define VI __m512i
#define VM __mmask16
#define LANE_OFFSETS _mm512_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448, 480)
#define GATHER(p, offsets) _mm512_i32gather_ps((offsets), (p), 4)
#define F_SET1 _mm512_set1_ps
#define F_ADD _mm512_add_ps
#define F_SUB _mm512_sub_ps
#define F_MUL _mm512_mul_ps
#define F_DIV _mm512_div_ps
#define F_SQRT _mm512_sqrt_ps
#define F_ABS _mm512_abs_ps
#define F_LT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ)
#define F_GT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GT_OQ)
#define F_EQ(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_EQ_OQ)
#define F_SELECT(m, a, b) _mm512_mask_blend_ps((m), (a), (b))
#define F_AS_I _mm512_castps_si512
#define F_STORE _mm512_storeu_ps
#define I_SET1 _mm512_set1_epi32
#define I_SUB _mm512_sub_epi32
#define I_AND _mm512_and_si512
#define I_MIN _mm512_min_epi32
#define I_MAX _mm512_max_epi32
#define I_TO_F _mm512_cvtepi32_ps
#define I_SELECT(m, a, b) _mm512_mask_blend_epi32((m), (a), (b))
#define I_STORE(p, v) _mm512_storeu_si512((p), (v))
#define M_NONE(m) ((m) == 0)
#define M_AND(a, b) ((__mmask16)((a) & (b)))
#include "q4k_search_simd.inc"
#endif

// q4_K: 8 sub-blocks of 32 with a 6-bit scale and min each (weights av_x + |x|), super-block d and
// dmin in fp16, 4-bit codes recomputed from the quantized scales.
void dsconvert_quantize_q4_k(const float *x, uint8_t *out, int64_t n) {
    uint8_t Ls[512];
    float mins_s[16], scales_s[16];
    void (*search)(const float *, uint8_t *, float *, float *) = q4k_search_scalar;
    int level = simd_level();
#if defined(__x86_64__)
    if (level >= 1) search = q4k_search_avx2;
#endif
    for (int64_t b = 0; b < n / 256; ++b, x += 256, out += 144) {
        // Searches run ahead, one super-block or (AVX-512) two at a time; block b uses the results at (b % 2).
        int slot = (int)(b % 2);
        if (slot == 0) {
#if defined(__x86_64__)
            if (level >= 2 && b + 1 < n / 256) q4k_search2_avx512(x, Ls, scales_s, mins_s);
            else
#endif
            {
                search(x, Ls, scales_s, mins_s);
                if (b + 1 < n / 256) search(x + 256, Ls + 256, scales_s + 8, mins_s + 8);
            }
        }
        uint8_t *L = Ls + 256 * slot;
        const float *scales = scales_s + 8 * slot, *mins = mins_s + 8 * slot;
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < 8; ++j) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
        float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
        uint8_t *packed = out + 4;
        memset(packed, 0, 12);
        for (int j = 0; j < 8; ++j) {
            uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
            uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
            ls = ls < 63 ? ls : 63;
            lm = lm < 63 ? lm : 63;
            if (j < 4) {
                packed[j] = ls;
                packed[j + 4] = lm;
            } else {
                packed[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
                packed[j - 4] |= (uint8_t)((ls >> 4) << 6);
                packed[j] |= (uint8_t)((lm >> 4) << 6);
            }
        }
        uint16_t dh = dsconvert_f32_to_f16(max_scale / 63.0f), mh = dsconvert_f32_to_f16(max_min / 63.0f);
        out[0] = (uint8_t)dh; out[1] = (uint8_t)(dh >> 8);
        out[2] = (uint8_t)mh; out[3] = (uint8_t)(mh >> 8);
        float d = dsconvert_f16_to_f32(dh), dmin = dsconvert_f16_to_f32(mh);
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            scale_min_k4(j, packed, &sc, &m);
            float dd = d * sc;
            if (dd == 0.0f) continue;
            float dm = dmin * m;
            for (int i = 0; i < 32; ++i) L[32 * j + i] = (uint8_t)clamp_int(nearest_int((x[32 * j + i] + dm) / dd), 0, 15);
        }
        uint8_t *qs = out + 16;
        for (int j = 0; j < 256; j += 64) {
            for (int l = 0; l < 32; ++l) qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        }
    }
}

// Symmetric scale of least x²-weighted squared error for codes in −nmax…nmax−1: the absmax grid, then
// grids −(nmax + 0.1 k) / max for k = −9…9 (k ≠ 0), keeping a grid when it fits better. Codes + nmax in L.
static float qx_quants(int n, int nmax, const float *x, uint8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < 1e-15f) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.0f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (uint8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) L[i] = (uint8_t)(nmax + clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

// The 16 sub-blocks' scales of a q6_K super-block, their codes (+32) in L.
static void q6k_search_scalar(const float *x, uint8_t *L, float *scales) {
    for (int ib = 0; ib < 16; ++ib) scales[ib] = qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
}

#if defined(__x86_64__)
// `qx_quants(16, 32, …)` for 8 sub-blocks at once in AVX2 lanes, each lane the scalar f32 operations in order.
__attribute__((target("avx2")))
static void q6k_search8_avx2(const float *x, uint8_t *L, float *scales) {
    __m256 X[16];
    __m256i Lv[16], La[16];
    const __m256i offsets = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112);
    const __m256 zero = _mm256_setzero_ps(), magic = _mm256_set1_ps(12582912.0f), sign = _mm256_set1_ps(-0.0f);
    const __m256i mantissa = _mm256_set1_epi32(0x007FFFFF), bias = _mm256_set1_epi32(0x00400000);
    const __m256i lo = _mm256_set1_epi32(-32), hi = _mm256_set1_epi32(31), nmax = _mm256_set1_epi32(32);
    #define NEAREST(f) _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(_mm256_add_ps((f), magic)), mantissa), bias)
    #define CLAMP(v) _mm256_min_epi32(_mm256_max_epi32((v), lo), hi)
    __m256 max = zero, amax = zero;
    for (int i = 0; i < 16; ++i) {
        X[i] = _mm256_i32gather_ps(x + i, offsets, 4);
        __m256 ax = _mm256_andnot_ps(sign, X[i]);
        __m256 larger = _mm256_cmp_ps(ax, amax, _CMP_GT_OQ);
        amax = _mm256_blendv_ps(amax, ax, larger);
        max = _mm256_blendv_ps(max, X[i], larger);
    }
    const __m256 flat = _mm256_cmp_ps(amax, _mm256_set1_ps(1e-15f), _CMP_LT_OQ);
    // One grid: codes clamp(nearest(iscale · x), −32, 31) (+32 into codes) and the x²-weighted sums.
    #define GRID(iscale, codes) \
        sumlx = zero; \
        suml2 = zero; \
        for (int i = 0; i < 16; ++i) { \
            __m256i l = CLAMP(NEAREST(_mm256_mul_ps((iscale), X[i]))); \
            (codes)[i] = _mm256_add_epi32(l, nmax); \
            __m256 lf = _mm256_cvtepi32_ps(l), w = _mm256_mul_ps(X[i], X[i]); \
            sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(_mm256_mul_ps(w, X[i]), lf)); \
            suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, lf), lf)); \
        }
    __m256 sumlx, suml2;
    GRID(_mm256_div_ps(_mm256_set1_ps(-32.0f), max), Lv)
    __m256 scale = _mm256_blendv_ps(_mm256_div_ps(sumlx, suml2), zero, _mm256_cmp_ps(suml2, zero, _CMP_EQ_OQ));
    __m256 best = _mm256_mul_ps(scale, sumlx);
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        const float grid = -(32 + 0.1f * is);
        GRID(_mm256_div_ps(_mm256_set1_ps(grid), max), La)
        __m256 better = _mm256_and_ps(_mm256_cmp_ps(suml2, zero, _CMP_GT_OQ),
                                      _mm256_cmp_ps(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best, suml2), _CMP_GT_OQ));
        if (_mm256_movemask_ps(better) == 0) continue;
        __m256i take = _mm256_castps_si256(better);
        for (int i = 0; i < 16; ++i) Lv[i] = _mm256_blendv_epi8(Lv[i], La[i], take);
        __m256 this_scale = _mm256_div_ps(sumlx, suml2);
        scale = _mm256_blendv_ps(scale, this_scale, better);
        best = _mm256_blendv_ps(best, _mm256_mul_ps(this_scale, sumlx), better);
    }
    #undef GRID
    #undef NEAREST
    #undef CLAMP
    // A sub-block below 1e-15 in magnitude: codes 0 (stored as 0, not 32) and scale 0, as the scalar search.
    __m256i flat_i = _mm256_castps_si256(flat);
    for (int i = 0; i < 16; ++i) Lv[i] = _mm256_andnot_si256(flat_i, Lv[i]);
    scale = _mm256_blendv_ps(scale, zero, flat);
    _mm256_storeu_ps(scales, scale);
    int32_t l8[8];
    for (int i = 0; i < 16; ++i) {
        _mm256_storeu_si256((__m256i *)l8, Lv[i]);
        for (int j = 0; j < 8; ++j) L[16 * j + i] = (uint8_t)l8[j];
    }
}

__attribute__((target("avx2")))
static void q6k_search_avx2(const float *x, uint8_t *L, float *scales) {
    q6k_search8_avx2(x, L, scales);
    q6k_search8_avx2(x + 128, L + 128, scales + 8);
}
#endif

// Which searches may run: 0 scalar, 1 AVX2, 2 AVX-512 (q4_K), as the CPU allows; DSCONVERT_NO_SIMD keeps
// the scalar ones and DSCONVERT_NO_AVX512 stops at AVX2 (the tests compare every path with ggml's bytes).
static int simd_level(void) {
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx2") || getenv("DSCONVERT_NO_SIMD")) return 0;
    return __builtin_cpu_supports("avx512f") && !getenv("DSCONVERT_NO_AVX512") ? 2 : 1;
#else
    return 0;
#endif
}

int dsconvert_ggml_simd_level(void) { return simd_level(); }

// q6_K: 16 sub-blocks of 16 with an int8 scale each, super-block d in fp16, 6-bit codes (low 4 bits
// in ql, high 2 in qh) recomputed from the quantized scales.
void dsconvert_quantize_q6_k(const float *x, uint8_t *out, int64_t n) {
    uint8_t L[256];
    float scales[16];
    void (*search)(const float *, uint8_t *, float *) = q6k_search_scalar;
#if defined(__x86_64__)
    if (simd_level() >= 1) search = q6k_search_avx2;
#endif
    for (int64_t b = 0; b < n / 256; ++b, x += 256, out += 210) {
        float max_scale = 0, max_abs_scale = 0;
        search(x, L, scales);
        for (int ib = 0; ib < 16; ++ib) {
            float as = fabsf(scales[ib]);
            if (as > max_abs_scale) { max_abs_scale = as; max_scale = scales[ib]; }
        }
        if (max_abs_scale < 1e-15f) {
            memset(out, 0, 210);
            continue;
        }
        float iscale = -128.0f / max_scale;
        uint16_t dh = dsconvert_f32_to_f16(1 / iscale);
        int8_t *sc = (int8_t *)(out + 192);
        for (int ib = 0; ib < 16; ++ib) {
            int v = nearest_int(iscale * scales[ib]);
            sc[ib] = (int8_t)(v < 127 ? v : 127);
        }
        out[208] = (uint8_t)dh; out[209] = (uint8_t)(dh >> 8);
        float d = dsconvert_f16_to_f32(dh);
        for (int j = 0; j < 16; ++j) {
            float dd = d * sc[j];
            if (dd == 0.0f) continue;
            for (int ii = 0; ii < 16; ++ii) L[16 * j + ii] = (uint8_t)(clamp_int(nearest_int(x[16 * j + ii] / dd), -32, 31) + 32);
        }
        uint8_t *ql = out, *qh = out + 128;
        for (int j = 0; j < 256; j += 128) {
            for (int l = 0; l < 32; ++l) {
                uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[j / 2 + l] = (uint8_t)(q1 | (q3 << 4));
                ql[j / 2 + l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[j / 4 + l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}
