// What the stored product's kernels (stored_gemm.c, stored_outputs.c) share: the defined sum's lane
// count, how much of x a chunk copies, and the checked decoding of one FP8 code. Not part of the
// module's interface.
#ifndef DSCONVERT_STORED_SHARED_H
#define DSCONVERT_STORED_SHARED_H

#include <stdint.h>

#include "fp8_encode.h"

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

#endif
