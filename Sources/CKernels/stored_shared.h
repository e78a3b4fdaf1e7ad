// What the stored product's kernels (stored_gemm.c, stored_outputs.c) share: the defined sum's lane
// count, how much of x a chunk copies, the checked decoding of one FP8 code, and the lane sums'
// reduction tree. Not part of the module's interface.
#ifndef DSCONVERT_STORED_SHARED_H
#define DSCONVERT_STORED_SHARED_H

#include <stddef.h>
#include <stdint.h>

#include "fp8_encode.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/// Lane sums per output in the defined order (`dsconvert_stored_gemm`).
enum { DSCONVERT_STORED_LANES = 16 };

/// Bytes of x a chunk of rows takes as copied: a chunk is read once per panel of weight rows, so it
/// must stay in the core's second-level cache beside the panel's work; larger (V3's 512 tokens x
/// 7168 columns: 14.7 MB) it came from the shared cache every time.
enum { DSCONVERT_STORED_X_CHUNK_BYTES = 1 << 20 };

/// An FP8 code's value times its block's scale, as every decoder gives it; sets *bad when the code
/// is NaN/Inf (E4M3 0x7F/0xFF, E5M2 0x7C-0x7F with either sign) or the product is not finite.
static inline float dsconvert_fp8_checked_value(uint8_t code, float scale, int e5m2, uint32_t *bad) {
    float v = dsconvert_fp8_value(code, e5m2) * scale;
    *bad |= ((code & 0x7Fu) >= (e5m2 ? 0x7Cu : 0x7Fu)) | ((dsconvert_bits_of(v) & 0x7FFFFFFFu) >= 0x7F800000u);
    return v;
}

#if defined(__x86_64__)
/// The sixteen lane sums of 8 outputs at once (lane l's 8 sums at sums + l * stride floats, 32-byte
/// aligned) into out[0..8), each output added exactly as `reduce_lanes` (stored_gemm.c) adds one's:
/// l + (l + 8), then + 4, + 2, + 1. Gathering a row's sums and adding one output at a time had cost
/// ~15% of a V3 down product.
__attribute__((target("avx2"))) static inline void dsconvert_reduce_lanes8(const float *sums, size_t stride, float *out) {
    __m256 s8[8], s4[4], s2[2];
    for (size_t l = 0; l < 8; l++) s8[l] = _mm256_add_ps(_mm256_load_ps(sums + l * stride), _mm256_load_ps(sums + (l + 8) * stride));
    for (size_t l = 0; l < 4; l++) s4[l] = _mm256_add_ps(s8[l], s8[l + 4]);
    for (size_t l = 0; l < 2; l++) s2[l] = _mm256_add_ps(s4[l], s4[l + 2]);
    _mm256_storeu_ps(out, _mm256_add_ps(s2[0], s2[1]));
}
#endif

#endif
