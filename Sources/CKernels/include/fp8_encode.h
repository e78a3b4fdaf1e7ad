// The branch-free FP8 encoders and decoder, shared by the C block kernel and Swift's FP8Codec (which calls
// them, inlined): one implementation of the rounding, pinned by the tests against torch's tables.
#ifndef DSCONVERT_FP8_ENCODE_H
#define DSCONVERT_FP8_ENCODE_H

#include <stdint.h>
#include <string.h>

static inline uint32_t dsconvert_bits_of(float v) { uint32_t b; memcpy(&b, &v, 4); return b; }
static inline float dsconvert_float_of(uint32_t b) { float v; memcpy(&v, &b, 4); return v; }

// Integer selects only, so loops over them vectorize. Subnormals: a * 2^k + 2^23 makes the f32 unit
// in the last place 1, so the FPU rounds to an integer, ties to even. It must round twice, never
// fuse (exact either way for these inputs, but bit-exactness should not hang on that argument).
#pragma STDC FP_CONTRACT OFF

/// E4M3FN: round to nearest even, finite values and ±inf saturate to ±448, NaN to 0x7F with its sign.
static inline uint8_t dsconvert_fp8_encode_e4m3(float x) {
    uint32_t bits = dsconvert_bits_of(x);
    uint32_t sign = (bits >> 24) & 0x80u;
    uint32_t magnitude = bits & 0x7FFFFFFFu;
    uint32_t clamped = magnitude > 0x43E00000u ? 0x43E00000u : magnitude;            // ±448, also ±inf
    uint32_t subnormal = dsconvert_bits_of(dsconvert_float_of(clamped) * 0x1p9f + 0x1p23f) - 0x4B000000u;
    uint32_t normal = ((clamped + 0x7FFFFu + ((clamped >> 20) & 1u)) >> 20) - (120u << 3);
    uint32_t code = clamped < 0x3C800000u ? subnormal : normal;                        // below 2^-6
    code = magnitude > 0x7F800000u ? 0x7Fu : code;                                     // NaN
    return (uint8_t)(code | sign);
}

/// E5M2: round to nearest even, finite values saturate at ±57344, ±inf stays inf, NaN to 0x7F.
static inline uint8_t dsconvert_fp8_encode_e5m2(float x) {
    uint32_t bits = dsconvert_bits_of(x);
    uint32_t sign = (bits >> 24) & 0x80u;
    uint32_t magnitude = bits & 0x7FFFFFFFu;
    uint32_t clamped = magnitude > 0x47600000u ? 0x47600000u : magnitude;            // ±57344
    uint32_t subnormal = dsconvert_bits_of(dsconvert_float_of(clamped) * 0x1p16f + 0x1p23f) - 0x4B000000u;
    uint32_t normal = ((clamped + 0xFFFFFu + ((clamped >> 21) & 1u)) >> 21) - (112u << 2);
    uint32_t code = clamped < 0x38800000u ? subnormal : normal;                        // below 2^-14
    code = magnitude == 0x7F800000u ? 0x7Cu : code;                                    // ±inf
    code = magnitude > 0x7F800000u ? 0x7Fu : code;                                    // NaN
    return (uint8_t)(code | sign);
}

/// The exact f32 value of FP8 code `c` (E4M3FN, or E5M2 when `e5m2`); NaN/Inf codes decode to finite
/// garbage, so callers flag them. Branch-free so each level's vectorizer widens it.
static inline float dsconvert_fp8_value(uint32_t c, int e5m2) {
    // Normal codes: exponent and mantissa bits moved into f32's fields with the exponent rebiased
    // (120 = 127 - 7 for E4M3, 112 = 127 - 15 for E5M2): the exact value, no arithmetic. Subnormal
    // codes (exponent 0): read as if their exponent were 1, which adds the implicit 2^(1 - bias),
    // then subtract it again, exactly (Sterbenz). No f32 subnormal is ever an operand (they cost a
    // microcode assist per vector on Intel cores: random codes, 1 in 16 subnormal, ran 10x slower),
    // and no branch: every level vectorizes the select.
    uint32_t u = c & 0x7Fu, sign = (c & 0x80u) << 24;
    uint32_t shift = e5m2 ? 21 : 20, rebias = e5m2 ? 112u : 120u;
    float normal = dsconvert_float_of((u << shift) + (rebias << 23));
    float subnormal = dsconvert_float_of((u << shift) + ((rebias + 1) << 23)) - (e5m2 ? 0x1p-14f : 0x1p-6f);
    float magnitude = (u >> (e5m2 ? 2 : 3)) ? normal : subnormal;
    return dsconvert_float_of(dsconvert_bits_of(magnitude) | sign);
}

#endif
