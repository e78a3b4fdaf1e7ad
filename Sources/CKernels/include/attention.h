// Causal attention of one (sequence, head) pair, and the exponential it and SiLU use: the reference
// forward pass's attention, fused so that a head's keys are packed once, its scores stay in the
// core's caches and no per-head copy of the keys and values is ever made (README "Validation at V3
// scale").
#ifndef DSCONVERT_ATTENTION_H
#define DSCONVERT_ATTENTION_H

#include <stddef.h>

/// e^x for each of `count` values, in one defined sequence of f32 operations (Cody and Waite's
/// reduction by ln 2 in two parts, 1 + r + r²·p(r) with p of degree 5, the power of two placed in the
/// exponent bits) so every instruction-set level gives the same bits (NaN payloads aside): within 1.26 ULP of e^x wherever e^x is
/// a normal f32 (measured over every f32 of that range against glibc's double exp; the tests hold it
/// to 2); 0 below x = -87.33 (where e^x is subnormal), +Inf above 88.72, NaN for NaN.
/// `out` may be `x`. `isa` must not exceed `dsconvert_fp8_best_isa()`.
void dsconvert_exp(int isa, const float *x, float *out, size_t count);

/// out[i] = silu(gate[i]) · up[i] = gate[i] / (1 + e^-gate[i]) · up[i], with `dsconvert_exp`'s e^x.
/// `out` may be `gate` (each element is read and written at its own index only).
void dsconvert_silu_mul(int isa, const float *gate, const float *up, float *out, size_t count);

/// A matrix's rows: row j of `width` floats at `data + j * ld`.
typedef struct {
    const float *data;
    size_t ld, width;
} dsconvert_rows;

/// softmax(scale · q kᵀ + causal mask) v for one sequence of `seq` positions and one head, into
/// out (row i at out + i * ldo, v.width floats):
/// - q has rows of k1.width + k2.width floats; a key is k1's row then k2's (k2.width may be 0), so the
///   expanded form's nope keys and shared rope keys, or the latent forms' cache, are read in place.
/// - Queries run in blocks of `block` rows, each against the keys up to its last query (what the mask
///   leaves), so scores take block x seq floats.
/// - Each score is (Σ_d q_d·k_d, one fused multiply-add per d in increasing d) · scale; each row's
///   softmax subtracts its maximum, takes `dsconvert_exp`, sums in f64 (sixteen lane sums, lane l the
///   keys j ≡ l (mod 16), added pairwise) and multiplies by the f32 reciprocal of the sum; each output
///   is Σ_j p_j·v_j over the keys up to the block's last query, rounded up to a multiple of 16 (the
///   masked ones and that padding with p = 0), one fused multiply-add per key in increasing j. The
///   mask is exact for finite values: a non-finite value of a later key in the same block would
///   reach earlier rows as 0 · Inf, as it did through sgemm.
/// Every instruction-set level gives the same bits (NaN payloads aside). The working memory is the
/// head's keys and values, seq · (k1.width + k2.width + v.width) floats, and a block's scores.
/// Returns 0, or 2 if its working memory (keys and values of the head, a block's scores) could not
/// be allocated. `isa` must not exceed `dsconvert_fp8_best_isa()`.
int dsconvert_causal_attention(int isa, size_t seq, size_t block, dsconvert_rows q, dsconvert_rows k1, dsconvert_rows k2,
                               dsconvert_rows v, float scale, float *out, size_t ldo);

#endif
