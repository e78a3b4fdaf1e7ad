// Widening stored weights to the f32 OpenBLAS multiplies.
#ifndef DSCONVERT_WIDEN_H
#define DSCONVERT_WIDEN_H

#include <stddef.h>
#include <stdint.h>

/// dst[i] = the f32 of bf16 src[i] (its bits shifted up 16: exact), for i < count, written with
/// streaming (non-temporal) stores where the level has them: the weight being widened is larger
/// than what the caches keep for the product that reads it next, and an ordinary store first reads
/// every destination line from memory. `isa` must not exceed `dsconvert_fp8_best_isa()`.
void dsconvert_bf16_to_f32_streaming(int isa, const uint16_t *src, float *dst, size_t count);

#endif
