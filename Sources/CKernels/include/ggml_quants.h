// llama.cpp's GGUF block quantizations (q8_0, q5_0, q4_K, q6_K), reimplemented from the published
// block formats and reference algorithms (ggml-quants.c's *_ref quantizers, no importance matrix:
// what llama-quantize and convert_hf_to_gguf.py write). Bit-exact with them where llama.cpp is built
// without FMA contraction (x86-64 baseline); README "GGUF" says how that is checked.
#ifndef DSCONVERT_GGML_QUANTS_H
#define DSCONVERT_GGML_QUANTS_H

#include <stddef.h>
#include <stdint.h>

/// Elements per block and bytes per block of each type.
enum {
    DSCONVERT_Q8_0_BLOCK = 32, DSCONVERT_Q8_0_BYTES = 34,
    DSCONVERT_Q5_0_BLOCK = 32, DSCONVERT_Q5_0_BYTES = 22,
    DSCONVERT_Q4_K_BLOCK = 256, DSCONVERT_Q4_K_BYTES = 144,
    DSCONVERT_Q6_K_BLOCK = 256, DSCONVERT_Q6_K_BYTES = 210,
};

/// Quantizes `n` floats (a multiple of the type's block) into `n / block` blocks at `out`.
void dsconvert_quantize_q8_0(const float *x, uint8_t *out, int64_t n);
void dsconvert_quantize_q5_0(const float *x, uint8_t *out, int64_t n);
void dsconvert_quantize_q4_k(const float *x, uint8_t *out, int64_t n);
void dsconvert_quantize_q6_k(const float *x, uint8_t *out, int64_t n);

/// The searches the quantizers use now: 0 scalar, 1 AVX2, 2 AVX-512 for q4_K (the CPU's, less what
/// DSCONVERT_NO_SIMD / DSCONVERT_NO_AVX512 turn off).
int dsconvert_ggml_simd_level(void);

/// IEEE binary16 of x, round to nearest even (subnormals, ±inf on overflow, quiet NaN).
uint16_t dsconvert_f32_to_f16(float x);
/// The f32 value of a binary16 (exact).
float dsconvert_f16_to_f32(uint16_t h);

#endif
