#include "fp8_kernels.h"

#include <stdlib.h>

#include "fp8_vbmi.inc"
#include "fp8_shift.inc"

// The largest magnitude bit pattern of n bf16 values, at least `m` (a plain reduction, which every
// level's vectorizer turns into 16-bit vector maxima).
static inline int16_t strip_max(const uint16_t *p, size_t n, int16_t m) {
    uint16_t largest = (uint16_t)m;
    for (size_t c = 0; c < n; c++) {
        uint16_t v = p[c] & 0x7FFFu;
        largest = v > largest ? v : largest;
    }
    return (int16_t)largest;
}

// scale = amax / max_finite, or 1 when that is 0: an all-zero tile, or one whose amax is so small
// (f32 subnormals below ~6e-43) that the division rounds to 0 and x / scale would be 0/0 = NaN.
// Scale 1 flushes such a tile to ±0 codes, as an all-zero tile; the Swift f32 path does the same.
static inline float block_scale(float amax, float max_finite) {
    float scale = amax / max_finite;
    return scale == 0.0f ? 1.0f : scale;
}

// One body, compiled once per level: the loops are written so each level's auto-vectorizer turns
// them into straight vector code (16-bit max for the amax, f32 division and integer selects for the
// encode). The division stays a division: torch's cast computes x / scale, and so must we.
enum { AMAX_STRIPS = 1024 };

#define DEFINE_BLOCK_ROW(NAME, ATTRIBUTES)                                                                   \
    ATTRIBUTES static int NAME(const uint16_t *x, size_t rows, size_t cols, size_t block, size_t block_row,  \
                               int e5m2, uint8_t *codes, float *scales, int scales_given) {                  \
        size_t per_row = (cols + block - 1) / block;                                                         \
        size_t r0 = block_row * block, r1 = r0 + block < rows ? r0 + block : rows;                            \
        float max_finite = e5m2 ? 57344.0f : 448.0f;                                                         \
        /* amax per tile, reading the rows front to back (a tile's rows are a page apart: walking  */ \
        /* them column strip by column strip defeats the prefetcher); strips beyond the stack array */ \
        /* are done in further passes.                                                             */ \
        int16_t amax[AMAX_STRIPS];                                                                            \
        int16_t largest = 0;                                                                                  \
        for (size_t first = 0; !scales_given && first < per_row; first += AMAX_STRIPS) {                    \
            size_t strips = per_row - first < AMAX_STRIPS ? per_row - first : AMAX_STRIPS;                   \
            for (size_t s = 0; s < strips; s++) amax[s] = 0;                                                 \
            for (size_t r = r0; r < r1; r++) {                                                               \
                const uint16_t *row = x + r * cols;                                                           \
                for (size_t s = 0; s < strips; s++) {                                                        \
                    size_t c0 = (first + s) * block, c1 = c0 + block < cols ? c0 + block : cols;             \
                    amax[s] = strip_max(row + c0, c1 - c0, amax[s]);                                          \
                }                                                                                             \
            }                                                                                                 \
            for (size_t s = 0; s < strips; s++) {                                                            \
                largest = amax[s] > largest ? amax[s] : largest;                                             \
                float a = dsconvert_float_of((uint32_t)(uint16_t)amax[s] << 16);                                       \
                scales[block_row * per_row + first + s] = block_scale(a, max_finite);                        \
            }                                                                                                 \
        }                                                                                                     \
        if (largest >= 0x7F80) return 1;                                                                      \
        if (!codes) return 0;                                                                                 \
        for (size_t r = r0; r < r1; r++) {                                                                   \
            const uint16_t *row = x + r * cols;                                                               \
            uint8_t *out = codes + r * cols;                                                                  \
            for (size_t bc = 0; bc < per_row; bc++) {                                                        \
                size_t c0 = bc * block, c1 = c0 + block < cols ? c0 + block : cols;                          \
                float scale = scales[block_row * per_row + bc];                                               \
                if (e5m2) {                                                                                   \
                    for (size_t c = c0; c < c1; c++) out[c] = dsconvert_fp8_encode_e5m2(dsconvert_float_of((uint32_t)row[c] << 16) / scale); \
                } else {                                                                                      \
                    for (size_t c = c0; c < c1; c++) out[c] = dsconvert_fp8_encode_e4m3(dsconvert_float_of((uint32_t)row[c] << 16) / scale); \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
        return 0;                                                                                             \
    }

DEFINE_BLOCK_ROW(block_row_baseline, )
#if defined(__x86_64__)
DEFINE_BLOCK_ROW(block_row_avx2, __attribute__((target("avx2"))))
DEFINE_BLOCK_ROW(block_row_avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))))
#endif

// The AVX-512 level's functions are compiled for F, BW, VL and DQ (every CPU with BW has the others, but a
// virtual machine may hide one), so it is taken only when the CPU reports all four.
int dsconvert_fp8_best_isa(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return DSCONVERT_ISA_AVX512;
    if (__builtin_cpu_supports("avx2")) return DSCONVERT_ISA_AVX2;
#endif
    return DSCONVERT_ISA_BASELINE;
}

int dsconvert_cpu_has_vbmi(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vbmi") && !getenv("DSCONVERT_NO_VBMI");
#else
    return 0;
#endif
}

int dsconvert_cpu_has_fma(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma") ? 1 : 0;
#else
    return 0;
#endif
}

int dsconvert_fp8_decoder(int isa) {
#if defined(__x86_64__)
    if (isa >= DSCONVERT_ISA_AVX512 && dsconvert_cpu_has_vbmi()) return DSCONVERT_FP8_DECODER_VBMI;
    __builtin_cpu_init();
    if (isa >= DSCONVERT_ISA_AVX2 && dsconvert_cpu_has_fma() && __builtin_cpu_supports("f16c")) return DSCONVERT_FP8_DECODER_F16C;
#else
    (void)isa;
#endif
    return DSCONVERT_FP8_DECODER_GENERIC;
}

int dsconvert_fp8_quantize_block_row_bf16(int isa, const uint16_t *x, size_t rows, size_t cols, size_t block,
                                          size_t block_row, int e5m2, uint8_t *codes, float *scales, int scales_given) {
#if defined(__x86_64__)
    if (isa >= DSCONVERT_ISA_AVX512) return block_row_avx512(x, rows, cols, block, block_row, e5m2, codes, scales, scales_given);
    if (isa == DSCONVERT_ISA_AVX2) return block_row_avx2(x, rows, cols, block, block_row, e5m2, codes, scales, scales_given);
#endif
    return block_row_baseline(x, rows, cols, block, block_row, e5m2, codes, scales, scales_given);
}

// FP8 -> bf16 for one block row: each code decoded arithmetically (no table: a lookup is a gather,
// which keeps the loop scalar), one f32 multiply, and bf16's round-to-nearest-even on the bit
// pattern. Finite codes decode exactly: normal ones by placing exponent and mantissa into f32 bits,
// subnormal ones as mantissa * 2^-9 (E4M3) or 2^-16 (E5M2). NaN/Inf codes and non-finite products
// are flagged (the caller names the code). The decoding is `dsconvert_fp8_value` (fp8_encode.h).
// One tile's columns: decode, multiply, flag what is not finite, store (E5M2 a constant, so each
// branch of the row loop gets its own specialized, vectorized loop).
#define DEQUANT_TILE(E5M2, STORE)                                                                             \
    for (size_t c = c0; c < c1; c++) {                                                                       \
        float v = dsconvert_fp8_value(row[c], E5M2) * scale;                                                            \
        uint32_t bits = dsconvert_bits_of(v);                                                                 \
        bad |= ((row[c] & 0x7Fu) >= special) | ((bits & 0x7FFFFFFFu) >= 0x7F800000u);                         \
        STORE;                                                                                                \
    }

// A block row of codes to OUT_T, each value stored by STORE (from `v`, its f32 product, and `bits`).
#define DEFINE_DEQUANT_ROW(NAME, ATTRIBUTES, OUT_T, STORE)                                                    \
    ATTRIBUTES static int NAME(const uint8_t *codes, size_t rows, size_t cols, size_t block, size_t block_row, \
                               int e5m2, const float *scales, OUT_T *out) {                                   \
        size_t per_row = (cols + block - 1) / block;                                                         \
        size_t r0 = block_row * block, r1 = r0 + block < rows ? r0 + block : rows;                            \
        uint32_t special = e5m2 ? 0x7Cu : 0x7Fu;                                                              \
        uint32_t bad = 0;                                                                                     \
        for (size_t r = r0; r < r1; r++) {                                                                   \
            const uint8_t *row = codes + r * cols;                                                            \
            OUT_T *dst = out + r * cols;                                                                      \
            for (size_t bc = 0; bc < per_row; bc++) {                                                        \
                size_t c0 = bc * block, c1 = c0 + block < cols ? c0 + block : cols;                          \
                float scale = scales[block_row * per_row + bc];                                               \
                if (e5m2) { DEQUANT_TILE(1, STORE) } else { DEQUANT_TILE(0, STORE) }                          \
            }                                                                                                 \
        }                                                                                                     \
        return bad != 0;                                                                                      \
    }

// bf16: round to nearest even on the bit pattern (finite values; the non-finite are flagged).
// A finite product above bf16's largest finite value rounds to Inf: flagged too.
#define STORE_BF16                                                                                            \
    uint16_t rounded = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);                              \
    bad |= (rounded & 0x7FFFu) >= 0x7F80u;                                                                    \
    dst[c] = rounded
#define STORE_F32 dst[c] = v

DEFINE_DEQUANT_ROW(dequant_row_baseline, , uint16_t, STORE_BF16)
DEFINE_DEQUANT_ROW(dequant_row_f32_baseline, , float, STORE_F32)
#if defined(__x86_64__)
DEFINE_DEQUANT_ROW(dequant_row_avx2, __attribute__((target("avx2"))), uint16_t, STORE_BF16)
DEFINE_DEQUANT_ROW(dequant_row_avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))), uint16_t, STORE_BF16)
DEFINE_DEQUANT_ROW(dequant_row_f32_avx2, __attribute__((target("avx2"))), float, STORE_F32)
DEFINE_DEQUANT_ROW(dequant_row_f32_avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))), float, STORE_F32)
#endif

// The entry point of one output type: the widest level `isa` allows.
#define DEFINE_DEQUANT_ENTRY(NAME, OUT_T, BASELINE, AVX2, AVX512)                                             \
    int NAME(int isa, const uint8_t *codes, size_t rows, size_t cols, size_t block, size_t block_row, int e5m2, \
             const float *scales, OUT_T *out) {                                                               \
        DISPATCH_LEVEL(isa, AVX2, AVX512, codes, rows, cols, block, block_row, e5m2, scales, out)              \
        return BASELINE(codes, rows, cols, block, block_row, e5m2, scales, out);                              \
    }
#if defined(__x86_64__)
#define DISPATCH_LEVEL(isa, AVX2, AVX512, ...)                                                                \
    if ((isa) >= DSCONVERT_ISA_AVX512) return AVX512(__VA_ARGS__);                                            \
    if ((isa) == DSCONVERT_ISA_AVX2) return AVX2(__VA_ARGS__);
#else
#define DISPATCH_LEVEL(isa, AVX2, AVX512, ...) (void)(isa);
#endif

DEFINE_DEQUANT_ENTRY(dsconvert_fp8_dequantize_block_row_bf16, uint16_t, dequant_row_baseline, dequant_row_avx2, dequant_row_avx512)
DEFINE_DEQUANT_ENTRY(dsconvert_fp8_dequantize_block_row_f32, float, dequant_row_f32_baseline, dequant_row_f32_avx2, dequant_row_f32_avx512)

#if defined(__x86_64__)
// The f32 dequantizer for a destination larger than the caches keep (a weight widened for the
// product that reads it next): the VBMI decoder, and streaming stores, which do not first read each
// destination line from memory. The same values as `dequant_row_f32_*`, the same flags: NaN/Inf
// codes from the decoder, and a block whose scale could overflow f32 with the format's largest code
// goes through the generic tile, which checks each product. As the bf16 widener does, each segment
// stores ordinarily up to the first 64-byte boundary of its destination and streams from there (the
// same number of values, `head`, in every segment of a row: blocks are a multiple of 16 wide);
// blocks that are not, or a destination not float-aligned, take ordinary stores.
VBMI_TARGET static int dequant_row_f32_streaming(const uint8_t *codes, size_t rows, size_t cols, size_t block, size_t block_row, int e5m2,
                                                 const float *scales, float *out) {
    fp8_tables tables;
    fp8_tables_fill(&tables, e5m2);
    fp8_registers r = fp8_registers_of(&tables, e5m2);
    size_t per_row = (cols + block - 1) / block;
    size_t r0 = block_row * block, r1 = r0 + block < rows ? r0 + block : rows;
    uint32_t special = e5m2 ? 0x7Cu : 0x7Fu, bad = 0;
    __mmask64 flagged = 0;
    for (size_t r_ = r0; r_ < r1; r_++) {
        const uint8_t *row = codes + r_ * cols;
        float *dst = out + r_ * cols;
        int streaming = ((uintptr_t)dst & 3) == 0 && block % 16 == 0;
        size_t head = ((64 - ((uintptr_t)dst & 63)) & 63) / sizeof(float);
        for (size_t bc = 0; bc < per_row; bc++) {
            size_t c0 = bc * block, c1 = c0 + block < cols ? c0 + block : cols;
            float scale = scales[block_row * per_row + bc];
            if (fp8_scale_keeps_finite(scale, e5m2)) {
                size_t lined = streaming ? (c0 + head < c1 ? c0 + head : c1) : c1;
                if (lined > c0) flagged |= decode_fp8_segment_vbmi(row, c0, lined, scale, &r, dst + c0, 0);
                if (lined < c1) flagged |= decode_fp8_segment_vbmi(row, lined, c1, scale, &r, dst + lined, 1);
            } else if (e5m2) {
                DEQUANT_TILE(1, STORE_F32)
            } else {
                DEQUANT_TILE(0, STORE_F32)
            }
        }
    }
    _mm_sfence();
    return bad != 0 || flagged != 0;
}
#endif

#if defined(__x86_64__)
// The same with the AVX2 decoder (`fp8_shift.inc`) and 32-byte streaming stores, for AVX2 and
// AVX-512 without VBMI: each segment stores ordinarily up to its destination's first 64-byte
// boundary (so no line is part ordinary, part streamed) and after its last whole group of 32, and
// streams between; a block whose scale the decoder does not take, or a destination not
// float-aligned, goes through the generic tile. The same values and flags.
FP8_SHIFT_TARGET static int dequant_row_f32_streaming_shift(const uint8_t *codes, size_t rows, size_t cols, size_t block, size_t block_row,
                                                            int e5m2, const float *scales, float *out) {
    size_t per_row = (cols + block - 1) / block;
    size_t r0 = block_row * block, r1 = r0 + block < rows ? r0 + block : rows;
    uint32_t special = e5m2 ? 0x7Cu : 0x7Fu, bad = 0;
    int flagged = 0;
    for (size_t r_ = r0; r_ < r1; r_++) {
        const uint8_t *row = codes + r_ * cols;
        float *dst = out + r_ * cols;
        int aligned = ((uintptr_t)dst & 3) == 0;
        for (size_t bc = 0; bc < per_row; bc++) {
            size_t first = bc * block, last = first + block < cols ? first + block : cols, done = first;
            float scale = scales[block_row * per_row + bc];
            if (fp8_shift_scale_fits(scale, e5m2)) {
                size_t head = aligned ? ((64 - ((uintptr_t)(dst + first) & 63)) & 63) / sizeof(float) : last - first;
                size_t lined = first + head < last ? first + head : last;
                {
                    size_t c0 = first, c1 = lined;
                    if (e5m2) { DEQUANT_TILE(1, STORE_F32) } else { DEQUANT_TILE(0, STORE_F32) }
                }
                done = e5m2 ? decode_fp8_groups_shift(1, row, lined, last, scale, dst + lined, 1, &flagged)
                            : decode_fp8_groups_shift(0, row, lined, last, scale, dst + lined, 1, &flagged);
            }
            size_t c0 = done, c1 = last;
            if (e5m2) { DEQUANT_TILE(1, STORE_F32) } else { DEQUANT_TILE(0, STORE_F32) }
        }
    }
    _mm_sfence();
    return bad != 0 || flagged != 0;
}
#endif

int dsconvert_fp8_dequantize_block_row_f32_streaming(int isa, const uint8_t *codes, size_t rows, size_t cols, size_t block, size_t block_row,
                                                     int e5m2, const float *scales, float *out) {
#if defined(__x86_64__)
    switch (dsconvert_fp8_decoder(isa)) {
    case DSCONVERT_FP8_DECODER_VBMI: return dequant_row_f32_streaming(codes, rows, cols, block, block_row, e5m2, scales, out);
    case DSCONVERT_FP8_DECODER_F16C: return dequant_row_f32_streaming_shift(codes, rows, cols, block, block_row, e5m2, scales, out);
    default: break;
    }
#endif
    return dsconvert_fp8_dequantize_block_row_f32(isa, codes, rows, cols, block, block_row, e5m2, scales, out);
}
