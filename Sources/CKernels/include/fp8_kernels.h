// Block-scaled FP8 quantization kernels, compiled for several x86-64 levels and chosen at run time:
// Swift compiles for baseline x86-64 (SSE2) only, which leaves 4-8x of this loop on the table.
#ifndef DSCONVERT_FP8_KERNELS_H
#define DSCONVERT_FP8_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "fp8_encode.h"

/// Instruction-set levels a kernel is compiled for.
enum {
    DSCONVERT_ISA_BASELINE = 0,  // x86-64 SSE2 (or whatever the target's default is)
    DSCONVERT_ISA_AVX2 = 1,
    DSCONVERT_ISA_AVX512 = 2,    // AVX-512 F, BW, VL and DQ
};

/// The best level this CPU runs.
int dsconvert_fp8_best_isa(void);

/// 1 if the CPU has AVX-512 VBMI (byte permutes: the FP8 decoder of the stored products and the
/// streaming dequantizer) and `DSCONVERT_NO_VBMI` is not set (for comparing the paths), else 0.
int dsconvert_cpu_has_vbmi(void);

/// 1 if the CPU has FMA (with AVX2, what OpenBLAS's Haswell kernels need), else 0.
int dsconvert_cpu_has_fma(void);

/// How FP8 codes are decoded at level `isa` on this CPU: one choice, shared by the stored products,
/// the streaming dequantizer and the benchmarks' report. VBMI byte permutes at AVX-512 where the
/// CPU has VBMI (and `DSCONVERT_NO_VBMI` is not set); else through f16 (`fp8_shift.inc`) at AVX2
/// and above where it has FMA and F16C; else the generic arithmetic decoder. Every decoder gives
/// the same bits.
enum { DSCONVERT_FP8_DECODER_GENERIC = 0, DSCONVERT_FP8_DECODER_F16C = 1, DSCONVERT_FP8_DECODER_VBMI = 2 };
int dsconvert_fp8_decoder(int isa);

/// Quantizes block row `block_row` of a row-major [rows, cols] bf16 matrix to FP8 (E4M3FN when
/// `e5m2` is 0, else E5M2): for each block x block tile, scale = amax / max_finite (1 when that
/// is 0: an all-zero tile, so never a zero scale) into `scales[block_row * ceil(cols/block) + bc]`, then, when `codes` is not NULL,
/// each code = fp8(x / scale) rounded to nearest even and saturated, DeepSeek's `weight_quant`.
/// With `scales_given`, `scales` already holds this block row's scales (from an earlier call on the
/// same data) and only the codes are computed. `isa` must not exceed `dsconvert_fp8_best_isa()`.
/// Returns 1 if the rows hold NaN or Inf (the outputs are then unspecified; never detected with
/// `scales_given`), else 0. Every level gives the same bytes.
int dsconvert_fp8_quantize_block_row_bf16(int isa, const uint16_t *x, size_t rows, size_t cols, size_t block,
                                          size_t block_row, int e5m2, uint8_t *codes, float *scales, int scales_given);

/// Dequantizes block row `block_row` of row-major [rows, cols] FP8 codes (E4M3FN when `e5m2` is 0,
/// else E5M2) to bf16: each value is the f32 product of the code's value and its tile's scale
/// (`scales[block_row * ceil(cols/block) + bc]`), rounded to nearest even into bf16 — DeepSeek's
/// `weight_dequant` followed by torch's `.to(torch.bfloat16)`. Returns 1 if a code is NaN or Inf or
/// a product is not finite (the caller reports which), else 0. `isa` must not exceed
/// `dsconvert_fp8_best_isa()`; every level gives the same bytes.
int dsconvert_fp8_dequantize_block_row_bf16(int isa, const uint8_t *codes, size_t rows, size_t cols, size_t block,
                                            size_t block_row, int e5m2, const float *scales, uint16_t *out);

/// The same as `dsconvert_fp8_dequantize_block_row_bf16` without the rounding: the f32 products.
int dsconvert_fp8_dequantize_block_row_f32(int isa, const uint8_t *codes, size_t rows, size_t cols, size_t block,
                                           size_t block_row, int e5m2, const float *scales, float *out);

/// The same values and flags as `dsconvert_fp8_dequantize_block_row_f32`, written with streaming
/// stores where the CPU has AVX-512 VBMI (decoded with byte permutes) or AVX2 with FMA and F16C
/// (decoded through f16, `fp8_shift.inc`), for destinations larger than
/// the caches keep: a weight widened for the product that reads it next. Fenced before it returns.
int dsconvert_fp8_dequantize_block_row_f32_streaming(int isa, const uint8_t *codes, size_t rows, size_t cols, size_t block,
                                                     size_t block_row, int e5m2, const float *scales, float *out);

#endif
