// Products with a weight as its checkpoint stores it (FP8 with block scales, bf16, f16, f32),
// converted to f32 inside the product (a small panel at a time, or as the micro-kernel reads it): a
// routed expert sees few tokens, so widening its weight whole first moves 4 bytes per parameter
// through memory for as little as 32 FLOPs, and the product waits on memory (README "Validation at
// V3 scale").
#ifndef DSCONVERT_STORED_GEMM_H
#define DSCONVERT_STORED_GEMM_H

#include <stddef.h>
#include <stdint.h>

/// How a weight's elements are stored.
enum {
    DSCONVERT_STORED_F32 = 0,
    DSCONVERT_STORED_BF16 = 1,
    DSCONVERT_STORED_F16 = 2,
    DSCONVERT_STORED_FP8_E4M3 = 3,  // with `scales`: w = value(code) * scale of its block, in f32
    DSCONVERT_STORED_FP8_E5M2 = 4,
};

/// A row-major [rows, cols] weight as stored. FP8 kinds have `scales`, row-major
/// [ceil(rows / block), ceil(cols / block)]; other kinds ignore `scales` and `block`.
typedef struct {
    int kind;
    const void *data;
    size_t rows, cols;
    const float *scales;
    size_t block;
} dsconvert_stored_matrix;

/// Output columns computed per panel (rows of the weight converted together).
enum { DSCONVERT_STORED_GEMM_PANEL = 6 };

/// y[i * ldy + n] = Σ_k x[i * cols + k] · w[n, k] for rows i < m and output columns n in [n0, n1).
///
/// The sum has one defined order, so every instruction-set level and every split of [n0, n1) gives
/// the same bits: sixteen lane sums, lane l taking the terms k ≡ l (mod 16) in increasing k, each
/// added by a fused multiply-add (the last step's missing terms as fma(0, 0, s)), then added as
/// ((l + l⊕8) + (… ⊕4)) + … down to one value (`dsconvert_stored_gemm_reference` spells it out).
/// Each weight value is the f32 its checkpoint defines: bf16 and f16 widened exactly, FP8 the f32
/// product of the code's value and its block's scale, as the dequantizing kernels compute it.
///
/// Returns 0; 1 if an FP8 code is NaN or Inf or a product is not finite (the caller names which:
/// `y` is then unspecified); 2 if its working memory (up to 1 MB of x plus 96 floats per row of a
/// chunk of x; at AVX2, FP8 with 5-31 rows: 256 floats per row and a 34 KB panel) could not be
/// allocated; 3 if `w` is not a valid description (an unknown kind, FP8
/// without scales or with a block of 0). With AVX-512, FP8 codes are decoded with VBMI byte
/// permutes where the CPU has them, unless `DSCONVERT_NO_VBMI` is set (for comparing the paths);
/// otherwise at AVX2 and above through f16 (F16C), with the same bits.
/// `isa` must not exceed `dsconvert_fp8_best_isa()`.
int dsconvert_stored_gemm(int isa, const dsconvert_stored_matrix *w, const float *x, size_t m,
                          size_t n0, size_t n1, float *y, size_t ldy);

/// The same products, one output at a time in plain C, for the tests: the definition above.
int dsconvert_stored_gemm_reference(const dsconvert_stored_matrix *w, const float *x, size_t m,
                                    size_t n0, size_t n1, float *y, size_t ldy);

#endif
