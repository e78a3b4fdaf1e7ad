// The stored product's AVX2 FP8 kernel with the vector over weight rows (stored_outputs.c), for
// `dsconvert_stored_gemm`: not part of the module's interface.
#ifndef DSCONVERT_STORED_OUTPUTS_H
#define DSCONVERT_STORED_OUTPUTS_H

#include "stored_gemm.h"

#if defined(__x86_64__)
/// `dsconvert_stored_gemm` for an FP8 weight (E4M3 or E5M2, with its scales and a block > 0) at
/// AVX2 on a CPU with FMA and F16C: the same sums, bits and return values, except that `w` is not
/// checked (never 3): the caller has validated it and chosen this kernel.
int dsconvert_stored_gemm_outputs_avx2(const dsconvert_stored_matrix *w, const float *x, size_t m, size_t n0, size_t n1, float *y,
                                       size_t ldy);
#endif

#endif
