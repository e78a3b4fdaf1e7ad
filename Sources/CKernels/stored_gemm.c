#include "stored_gemm.h"

#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "fp8_encode.h"
#include "fp8_kernels.h"
#include "stored_outputs.h"
#include "stored_shared.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// The product is blocked so that what a micro-kernel touches stays in the core's caches: a panel of
// NR weight rows converted to f32 over a column block of kc columns (6 or 12 KB, first level), and x
// taken a chunk of rows (up to 1 MB, second level) at a time, copied into tiles of MR rows that the
// micro-kernel reads as one stream (a tile over a block: 4 or 8 KB). Each (row of x, weight row) pair
// keeps sixteen lane sums in memory between column blocks (`chunk_rows`); a micro-kernel holds MR x
// NR of them in registers (24 of 32 zmm), loaded and stored once per block. FP8 decoded by VBMI takes
// blocks of KC_LONG columns: at ~16 rows of x the sums' loads and stores per block were ~4% of the
// product, and blocks twice as long made it 3-5% faster (16-48 rows, 2,048 and 7,168 columns). Other kinds take
// them from LONG_BLOCK_ROWS rows of x on: bf16 1408 x 2048 on a Zen 5 host, weights from
// memory, two products at once, 256 -> 512 columns: 8-16 rows 203-304 -> 173-289 GFLOP/s (with few
// rows the product waits on the weight's bytes, and longer blocks fetch them in longer bursts), 24-32
// rows level, 48-176 rows 367-376 -> 380-386 (the sums' loads and stores halved). On the Intel host
// of earlier measurements bf16 at 16-48 rows was 12% slower with them. FP8 through the AVX2
// decoder (AVX2, or AVX-512 without VBMI) takes KC_LONG too (a 16-row V3 expert on a Zen 3 host,
// AVX2, interleaved runs: 72-82 against 64-81 GFLOP/s with KC; not measured on an AVX-512 host
// without VBMI); at the baseline level it keeps KC. The block length changes no bit: each lane's
// terms are added in increasing k whatever the blocks.
//
// At AVX-512, bf16 and f32 weights are not packed: the micro-kernel reads each whole panel's rows
// where they are stored and converts 16 values as it multiplies them (`micro512_direct`; bf16 is a
// zero-extension and a shift). Writing the panel and reading it back cost more than converting it
// once per tile of x: bf16 2048 x 7168 (V3's expert shape, as a bf16 copy of V3 stores it) from
// memory, two products at once, 9-16 rows 203-310 -> 249-355 GFLOP/s, 24-32 rows 336-360 -> 368-383;
// V2-Lite's 1408 x 2048 level from 32 rows on. FP8 keeps the panel: its decoding per tile cost more
// than the panel (12% slower on the Intel host), as does f16 (its conversion is not one shift).
enum { NR = DSCONVERT_STORED_GEMM_PANEL, KC = 256, KC_LONG = 512, LONG_BLOCK_ROWS = 32, MR = 4, LANES = DSCONVERT_STORED_LANES };

// From how many rows of x the AVX2 products take the broadcast kernel (`bcast_avx2`; README "A host
// without AVX-512" has the measurements): FP8 from 16 (V3's 2048 x 7168 1.07-1.17x from 16 rows on,
// 7168 x 2048 level at 16-24 rows and 1.09-1.16x from 32); bf16 and the others from 48 (V2-Lite's
// 1408 x 2048 level at 16-32 rows and 1.11-1.26x from 48, but 2048 x 1408 0.92-0.96x at 16-32 rows).
enum { BROADCAST_ROWS_FP8 = 16, BROADCAST_ROWS = 48 };

// Which AVX2 FP8 products (decoded through f16) go whole to the output-vector kernel
// (stored_outputs.c: a ymm register holds 8 weight rows' sums, x broadcast): from
// OUTPUT_VECTOR_ROWS_MIN rows of x up to OUTPUT_VECTOR_ROWS_END, excluded. Against the kernels
// here, a 2048 x 7168 weight on a Zen 3 host (`scripts/stored-product-ab.sh`, 2 cores x 16 runs):
// 4 rows 0.995x, 5 rows 1.03x, 8-24 rows 1.04-1.19x, 28 rows 1.02x, 32 rows 0.96x (the broadcast
// kernel's cheaper panel wins from there). README "A host without AVX-512" has the table.
enum { OUTPUT_VECTOR_ROWS_MIN = 5, OUTPUT_VECTOR_ROWS_END = 32 };

// f16 -> f32, exactly and branch-free (as `dsconvert_fp8_value`: normal values by moving the fields,
// subnormal ones read with exponent 1 and the implicit bit subtracted again, Inf/NaN kept).
static inline float f16_value(uint32_t h) {
    uint32_t u = h & 0x7FFFu, sign = (h & 0x8000u) << 16;
    float normal = dsconvert_float_of((u << 13) + (112u << 23));
    float subnormal = dsconvert_float_of((u << 13) + (113u << 23)) - 0x1p-14f;
    float special = dsconvert_float_of((u << 13) | 0x7F800000u);
    uint32_t exponent = u >> 10;
    float magnitude = exponent == 0 ? subnormal : (exponent == 31 ? special : normal);
    return dsconvert_float_of(dsconvert_bits_of(magnitude) | sign);
}

// A stored 16-bit value at any address: a checkpoint's tensor data need not be aligned.
static inline uint16_t load_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

// Weight rows [r0, r0 + nr) over columns [k0, k0 + len) as f32 into p (row j at p + j * kc), rows
// nr..<NR zero. Returns 1 if an FP8 code is NaN/Inf or a product not finite. Written so each level's
// vectorizer widens the column loops.
#define DEFINE_PACK(NAME, ATTRIBUTES)                                                                        \
    ATTRIBUTES static int NAME(const dsconvert_stored_matrix *w, size_t r0, size_t nr, size_t k0, size_t len, \
                               size_t kc, float *p) {                                                         \
        size_t cols = w->cols;                                                                                \
        uint32_t bad = 0;                                                                                     \
        for (size_t j = 0; j < NR; j++) {                                                                    \
            float *dst = p + j * kc;                                                                          \
            size_t row = r0 + j;                                                                              \
            if (j >= nr) {                                                                                    \
                for (size_t c = 0; c < len; c++) dst[c] = 0.0f;                                               \
                continue;                                                                                     \
            }                                                                                                 \
            switch (w->kind) {                                                                                \
            case DSCONVERT_STORED_F32:                                                                        \
                memcpy(dst, (const uint8_t *)w->data + (row * cols + k0) * 4, len * sizeof(float));           \
                break;                                                                                        \
            case DSCONVERT_STORED_BF16: {                                                                     \
                const uint8_t *src = (const uint8_t *)w->data + (row * cols + k0) * 2;                        \
                for (size_t c = 0; c < len; c++) dst[c] = dsconvert_float_of((uint32_t)load_u16(src + 2 * c) << 16); \
                break;                                                                                        \
            }                                                                                                 \
            case DSCONVERT_STORED_F16: {                                                                      \
                const uint8_t *src = (const uint8_t *)w->data + (row * cols + k0) * 2;                        \
                for (size_t c = 0; c < len; c++) dst[c] = f16_value(load_u16(src + 2 * c));                   \
                break;                                                                                        \
            }                                                                                                 \
            default: {                                                                                        \
                int e5m2 = w->kind == DSCONVERT_STORED_FP8_E5M2;                                              \
                const uint8_t *codes = (const uint8_t *)w->data + row * cols;                                 \
                size_t block = w->block, per_row = (cols + block - 1) / block;                                \
                for (size_t c0 = k0; c0 < k0 + len;) {                                                        \
                    size_t end = (c0 / block + 1) * block, c1 = end < k0 + len ? end : k0 + len;              \
                    float scale = w->scales[(row / block) * per_row + c0 / block];                            \
                    if (e5m2) {                                                                               \
                        PACK_FP8_SEGMENT(1)                                                                   \
                    } else {                                                                                  \
                        PACK_FP8_SEGMENT(0)                                                                   \
                    }                                                                                         \
                    c0 = c1;                                                                                  \
                }                                                                                             \
            }                                                                                                 \
            }                                                                                                 \
        }                                                                                                     \
        return bad != 0;                                                                                      \
    }
#define PACK_FP8_SEGMENT(E5M2)                                                                                \
    for (size_t c = c0; c < c1; c++) dst[c - k0] = dsconvert_fp8_checked_value(codes[c], scale, E5M2, &bad);

// The sixteen lane sums of one (row of x, weight row) pair, added in the order the header defines.
static float reduce_lanes(const float *s) {
    float s8[8], s4[4], s2[2];
    for (int l = 0; l < 8; l++) s8[l] = s[l] + s[l + 8];
    for (int l = 0; l < 4; l++) s4[l] = s8[l] + s8[l + 4];
    for (int l = 0; l < 2; l++) s2[l] = s4[l] + s4[l + 2];
    return s2[0] + s2[1];
}

// Lane sums of a tile of mr rows of x against the NR packed rows over `steps` steps of 16 columns,
// in plain C: acc[(i * NR + j) * 16 + l] (zeroed first when `first`). The tile is laid out step by
// step (`x_tile_index`) and, like the panel, zero past the last column, so the last step's missing
// terms are fma(0, 0, s) as the definition says. Each level's vectorizer widens the lane loop into
// fused multiply-adds (fmaf is one instruction wherever the level has FMA).
#define DEFINE_MICRO(NAME, ATTRIBUTES)                                                                       \
    ATTRIBUTES static void NAME(size_t mr, const float *x, const float *p, size_t kc, size_t steps, float *acc, int first) { \
        if (first) memset(acc, 0, mr * NR * LANES * sizeof(float));                                           \
        for (size_t step = 0; step < steps; step++) {                                                         \
            for (size_t i = 0; i < mr; i++) {                                                                 \
                const float *xs = x + (step * mr + i) * LANES;                                                \
                for (size_t j = 0; j < NR; j++) {                                                             \
                    float *s = acc + (i * NR + j) * LANES;                                                    \
                    const float *pj = p + j * kc + step * LANES;                                              \
                    for (size_t l = 0; l < LANES; l++) s[l] = fmaf(xs[l], pj[l], s[l]);                       \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
    }

DEFINE_PACK(pack_baseline, )
DEFINE_MICRO(micro_baseline, )
#if defined(__x86_64__)
DEFINE_PACK(pack_avx2, __attribute__((target("avx2,fma"))))

// The AVX2 micro-kernel: sixteen lanes are two ymm registers, so a (row of x, weight row) pair
// holds two of the 16. Two rows of x against three weight rows (12 accumulators) per pass over the
// columns, 8 columns at a time: 2 loads of x and 3 of weights per 6 fused multiply-adds. One row
// against all six weight rows, the form before, loaded 7 per 6: on a Zen 3 host (AVX2 only), a
// 16-row FP8 V3 expert from memory, two at once, went from 60-74 to 71-84 GFLOP/s with this tile
// (the AVX2 FP8 decoder already in; 46-60 before both).
__attribute__((target("avx2,fma"), always_inline)) static inline void micro_avx2_tile(const size_t MR_, const float *x, size_t mr,
                                                                                   const float *p, size_t kc, size_t steps,
                                                                                   float *acc, int first) {
    __m256 s[2][3][2];
    for (size_t i = 0; i < MR_; i++)
        for (size_t j = 0; j < 3; j++)
            for (size_t h = 0; h < 2; h++) s[i][j][h] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc + (i * NR + j) * LANES + 8 * h);
    for (size_t step = 0; step < steps; step++) {
        for (size_t h = 0; h < 2; h++) {
            __m256 a[2];
            for (size_t i = 0; i < MR_; i++) a[i] = _mm256_load_ps(x + (step * mr + i) * LANES + 8 * h);
            for (size_t j = 0; j < 3; j++) {
                __m256 b = _mm256_load_ps(p + j * kc + step * LANES + 8 * h);
                for (size_t i = 0; i < MR_; i++) s[i][j][h] = _mm256_fmadd_ps(a[i], b, s[i][j][h]);
            }
        }
    }
    for (size_t i = 0; i < MR_; i++)
        for (size_t j = 0; j < 3; j++)
            for (size_t h = 0; h < 2; h++) _mm256_storeu_ps(acc + (i * NR + j) * LANES + 8 * h, s[i][j][h]);
}

_Static_assert(NR % 3 == 0, "micro_avx2 takes the panel's weight rows three at a time");

__attribute__((target("avx2,fma"))) static void micro_avx2(size_t mr, const float *x, const float *p, size_t kc, size_t steps,
                                                           float *acc, int first) {
    for (size_t i = 0; i < mr; i += 2)
        for (size_t j = 0; j < NR; j += 3) {
            if (mr - i >= 2) micro_avx2_tile(2, x + i * LANES, mr, p + j * kc, kc, steps, acc + (i * NR + j) * LANES, first);
            else micro_avx2_tile(1, x + i * LANES, mr, p + j * kc, kc, steps, acc + (i * NR + j) * LANES, first);
        }
}

// The AVX2 broadcast kernel, for rows of x sixteen at a time: a ymm register holds one lane's sum for
// 8 rows of x (the vector runs over rows, not columns) and each weight value is broadcast to it. Lane
// l's sums take the terms k = k0 + 16 step + l in increasing k, each by a fused multiply-add: the
// defined order, so the same bits as the column-vector kernel. What it changes is the count of loads:
// two groups of 8 rows by the panel's NR rows take, per step, 2 loads of x and NR broadcasts per 12
// fused multiply-adds (8 per 12, against micro_avx2's 10 per 12). The lanes are taken one after
// another, their sums in registers over the column block, so the sums are loaded and stored once per
// lane and block. xb: this column block's x as [group][lane][step][8 rows]; bacc: [group][weight
// row][lane][8 rows].
//
// Against micro_avx2 alone, on a Zen 3 host (`scripts/stored-product-ab.sh`: one process, the two in
// turn, 2 cores x 20 runs each, medians): README "A host without AVX-512" has the table. One group
// alone (8-15 rows) is not taken this way: its 6 sums wait on the fused multiply-adds' latency, and
// two lanes side by side (12 sums, 14 loads per 12) ran 0.91x at 13 rows.
__attribute__((target("avx2,fma"))) static void bcast_avx2(const float *xb, const float *p, size_t kc, size_t steps,
                                                           float *bacc, int first) {
    for (size_t l = 0; l < LANES; l++) {
        float *sums[2] = {bacc + l * 8, bacc + NR * LANES * 8 + l * 8};
        const float *xs[2] = {xb + l * steps * 8, xb + (LANES + l) * steps * 8};
        __m256 s[2][NR];
        for (size_t t = 0; t < 2; t++)
            for (size_t j = 0; j < NR; j++) s[t][j] = first ? _mm256_setzero_ps() : _mm256_load_ps(sums[t] + j * LANES * 8);
        const float *pl = p + l;
        for (size_t step = 0; step < steps; step++) {
            __m256 a0 = _mm256_load_ps(xs[0] + step * 8), a1 = _mm256_load_ps(xs[1] + step * 8);
            for (size_t j = 0; j < NR; j++) {
                __m256 b = _mm256_broadcast_ss(pl + j * kc + step * LANES);
                s[0][j] = _mm256_fmadd_ps(a0, b, s[0][j]);
                s[1][j] = _mm256_fmadd_ps(a1, b, s[1][j]);
            }
        }
        for (size_t t = 0; t < 2; t++)
            for (size_t j = 0; j < NR; j++) _mm256_store_ps(sums[t] + j * LANES * 8, s[t][j]);
    }
}

DEFINE_PACK(pack_avx512, __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))))

#include "fp8_vbmi.inc"
#include "fp8_shift.inc"

// One segment in plain C, each product checked: for scales whose products could overflow.
static int pack_fp8_segment_checked(const uint8_t *codes, size_t c0, size_t c1, float scale, int e5m2, float *dst) {
    uint32_t bad = 0;
    size_t k0 = c0;  // the generic pack's segment body writes dst[c - k0]
    PACK_FP8_SEGMENT(e5m2)
    return bad != 0;
}

// The walk both FP8 packs share: each of the panel's rows (rows nr..<NR zeroed), and along it each
// segment [c0, c1) of one scale block within [k0, k0 + len), whose codes DECODE_SEGMENT writes to
// dst + (c0 - k0) under `scale`. The scale blocks are stepped through, not divided for: three
// divisions per segment of 128 columns made the VBMI pack 9% slower (2.47 -> 2.26 ns per 64 codes).
#define FP8_PACK_WALK(DECODE_SEGMENT)                                                                     \
    size_t cols = w->cols, block = w->block, per_row = (cols + block - 1) / block;                       \
    size_t first_block = k0 / block, first_end = (first_block + 1) * block;                               \
    size_t row_block = r0 / block, next_row_block = (row_block + 1) * block;                              \
    for (size_t j = 0; j < NR; j++) {                                                                     \
        float *dst = p + j * kc;                                                                          \
        if (j >= nr) {                                                                                    \
            memset(dst, 0, len * sizeof(float));                                                          \
            continue;                                                                                     \
        }                                                                                                 \
        size_t row = r0 + j;                                                                              \
        if (row == next_row_block) {                                                                      \
            row_block++;                                                                                  \
            next_row_block += block;                                                                      \
        }                                                                                                 \
        const uint8_t *codes = (const uint8_t *)w->data + row * cols;                                     \
        const float *scale_of_segment = w->scales + row_block * per_row + first_block;                    \
        for (size_t c0 = k0, end = first_end; c0 < k0 + len; scale_of_segment++, end += block) {         \
            size_t c1 = end < k0 + len ? end : k0 + len;                                                  \
            float scale = *scale_of_segment;                                                              \
            DECODE_SEGMENT                                                                                \
            c0 = c1;                                                                                      \
        }                                                                                                 \
    }

// The FP8 pack with the VBMI decoder (the generic pack's contract); a segment whose scale could
// overflow f32 with the format's largest code goes through the generic pack's segment body, which
// checks each product.
VBMI_TARGET static int pack_fp8_vbmi(const dsconvert_stored_matrix *w, const fp8_tables *t, size_t r0, size_t nr, size_t k0,
                                     size_t len, size_t kc, float *p) {
    int e5m2 = w->kind == DSCONVERT_STORED_FP8_E5M2, bad = 0;
    fp8_registers r = fp8_registers_of(t, e5m2);
    __mmask64 flagged = 0;
    FP8_PACK_WALK(if (fp8_scale_keeps_finite(scale, e5m2)) {
        flagged |= decode_fp8_segment_vbmi(codes, c0, c1, scale, &r, dst + (c0 - k0), 0);
    } else {
        bad |= pack_fp8_segment_checked(codes, c0, c1, scale, e5m2, dst + (c0 - k0));
    })
    return bad | (flagged != 0);
}

// The FP8 pack with the AVX2 decoder (`fp8_shift.inc`; the generic pack's contract), at AVX2 and
// at AVX-512 without VBMI: with the generic pack's decoding the 16-row V3 expert ran at 31 GFLOP/s
// a core on a Zen 3 host. A segment's last codes short of 32, and a block whose scale the decoder
// does not take, go through the generic segment body, which checks each product.
FP8_SHIFT_TARGET static int pack_fp8_shift(const dsconvert_stored_matrix *w, size_t r0, size_t nr, size_t k0, size_t len, size_t kc,
                                           float *p) {
    int e5m2 = w->kind == DSCONVERT_STORED_FP8_E5M2, bad = 0;
    FP8_PACK_WALK(size_t done = c0; if (fp8_shift_scale_fits(scale, e5m2)) done = e5m2
        ? decode_fp8_groups_shift(1, codes, c0, c1, scale, dst + (c0 - k0), 0, &bad)
        : decode_fp8_groups_shift(0, codes, c0, c1, scale, dst + (c0 - k0), 0, &bad);
        if (done < c1) bad |= pack_fp8_segment_checked(codes, done, c1, scale, e5m2, dst + (done - k0));)
    return bad != 0;
}

// The AVX-512 micro-kernel: MR_ rows of x by NR weight rows, 16 columns per step, MR_ x NR sums in
// registers; x's tile is one contiguous stream (step by step, row by row). Inlined with a constant
// MR_ so the loops unroll and the sums stay in registers.
__attribute__((target("avx512f"), always_inline)) static inline void micro512(const size_t MR_, const float *x, const float *p,
                                                                               size_t kc, size_t steps, float *acc, int first) {
    __m512 s[MR][NR];
    for (size_t i = 0; i < MR_; i++)
        for (size_t j = 0; j < NR; j++) s[i][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + (i * NR + j) * LANES);
    for (size_t step = 0; step < steps; step++) {
        __m512 a[MR];
        for (size_t i = 0; i < MR_; i++) a[i] = _mm512_load_ps(x + (step * MR_ + i) * LANES);
        for (size_t j = 0; j < NR; j++) {
            __m512 b = _mm512_load_ps(p + j * kc + step * LANES);
            for (size_t i = 0; i < MR_; i++) s[i][j] = _mm512_fmadd_ps(a[i], b, s[i][j]);
        }
    }
    for (size_t i = 0; i < MR_; i++)
        for (size_t j = 0; j < NR; j++) _mm512_storeu_ps(acc + (i * NR + j) * LANES, s[i][j]);
}

__attribute__((target("avx512f"))) static void micro_avx512(size_t mr, const float *x, const float *p, size_t kc, size_t steps,
                                                             float *acc, int first) {
    switch (mr) {
    case 4: micro512(4, x, p, kc, steps, acc, first); break;
    case 3: micro512(3, x, p, kc, steps, acc, first); break;
    case 2: micro512(2, x, p, kc, steps, acc, first); break;
    default: micro512(1, x, p, kc, steps, acc, first); break;
    }
}

// 16 weights of a bf16 or f32 row as f32, from `w` (any address); the tail's form reads only the
// first `n` < 16 (the rest 0, as the panel's missing columns). bf16 is the high half of its f32:
// zero-extended and shifted, exactly the pack's value.
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline __m512 direct_weights(const int BF16_, const uint8_t *w) {
    if (BF16_) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)w)), 16));
    return _mm512_loadu_ps((const float *)w);
}
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline __m512 direct_weights_tail(const int BF16_, const uint8_t *w, size_t n) {
    if (BF16_) {
        __m256i bits = _mm512_castsi512_si256(_mm512_maskz_loadu_epi16((__mmask32)((1u << n) - 1u), w));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
    }
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1u), w);
}

// One step of micro512_direct: 16 columns of the NR rows against MR_ rows of x. `LOAD` is the
// expression for row j's 16 weights at this step: it reads the loop's own `j` and `step`.
#define DIRECT_STEP(LOAD)                                                                      \
    {                                                                                          \
        __m512 a[MR];                                                                          \
        for (size_t i = 0; i < MR_; i++) a[i] = _mm512_load_ps(x + (step * MR_ + i) * LANES);  \
        for (size_t j = 0; j < NR; j++) {                                                      \
            __m512 b = LOAD;                                                                   \
            for (size_t i = 0; i < MR_; i++) s[i][j] = _mm512_fmadd_ps(a[i], b, s[i][j]);     \
        }                                                                                      \
    }

// micro512 reading the NR weight rows where the checkpoint stores them (row j at w + j * ldw bytes,
// `len` columns of this block) and converting each 16 as it multiplies them, instead of from a packed
// panel: for bf16 and f32 the conversion (two operations per 16, none for f32) costs less than
// writing the panel and reading it back. The missing columns of the last step are zeros, as in the
// panel.
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline void micro512_direct(const size_t MR_, const int BF16_, const float *x,
                                                                                           const uint8_t *w, size_t ldw, size_t len,
                                                                                           float *acc, int first) {
    const size_t size = BF16_ ? 2 : 4, full = len / LANES, tail = len % LANES;
    __m512 s[MR][NR];
    for (size_t i = 0; i < MR_; i++)
        for (size_t j = 0; j < NR; j++) s[i][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + (i * NR + j) * LANES);
    for (size_t step = 0; step < full; step++) DIRECT_STEP(direct_weights(BF16_, w + j * ldw + step * LANES * size))
    if (tail) {
        size_t step = full;
        DIRECT_STEP(direct_weights_tail(BF16_, w + j * ldw + step * LANES * size, tail))
    }
    for (size_t i = 0; i < MR_; i++)
        for (size_t j = 0; j < NR; j++) _mm512_storeu_ps(acc + (i * NR + j) * LANES, s[i][j]);
}

#define DIRECT_ROWS(BF16_)                                                                   \
    switch (mr) {                                                                            \
    case 4: micro512_direct(4, BF16_, x, w, ldw, len, acc, first); break;                    \
    case 3: micro512_direct(3, BF16_, x, w, ldw, len, acc, first); break;                    \
    case 2: micro512_direct(2, BF16_, x, w, ldw, len, acc, first); break;                    \
    default: micro512_direct(1, BF16_, x, w, ldw, len, acc, first); break;                   \
    }

__attribute__((target("avx512f,avx512bw"))) static void micro_direct_avx512(size_t mr, int bf16, const float *x, const uint8_t *w, size_t ldw,
                                                                            size_t len, float *acc, int first) {
    if (bf16) {
        DIRECT_ROWS(1)
    } else {
        DIRECT_ROWS(0)
    }
}
#endif

typedef int (*pack_fn)(const dsconvert_stored_matrix *, size_t, size_t, size_t, size_t, size_t, float *);
typedef void (*micro_fn)(size_t, const float *, const float *, size_t, size_t, float *, int);

// How one product runs: the level's pack and micro-kernel (or the VBMI decoder with its tables) and
// the column block length.
typedef struct {
    pack_fn pack;
    micro_fn micro;
    int vbmi;
    // bf16 or f32 at AVX-512: no panel, the micro-kernel reads the stored rows (`micro512_direct`).
    int direct;
    const void *tables;
    size_t kc;
    // Column blocks the weight's bytes are requested ahead (`prefetch_ahead`): 4 for the short blocks
    // (256 columns) of bf16, f16 and f32 under LONG_BLOCK_ROWS rows of x, whose panels are done too
    // soon for 2 (bf16 from memory, two products at once, built as the package builds C, 4 against
    // 2: 2048 x 7168 at 4 rows 134-172 -> 197-226 GFLOP/s, 8 rows 225-263 -> 356-370, 16 rows 360-387
    // -> 401-411; 1408 x 2048 at 9 rows 260 -> 336-345, 16 rows 379-386 -> 396-398; level from 32
    // rows); for FP8 under 32 rows 3 (through VBMI: 512-column blocks of one byte per weight; 3
    // against 2: 2048 x 7168 at 2-4 rows +5-15%, 8 rows +3-8%, 12-16 rows +1-4%, 24 rows level, 4
    // no better); 2 from 32 rows on.
    size_t ahead;
    // The weight's row length rounded up to whole column blocks.
    size_t span;
    // AVX2 with enough rows of x (BROADCAST_ROWS_FP8, BROADCAST_ROWS): rows sixteen at a time (two
    // groups of 8) go through `bcast_avx2`, the rest (up to 15) through `micro`.
    int bcast;
} product_plan;

// A chunk's working memory: x copied for the kernels and the lane sums. With groups of 8 rows
// (`product_plan.bcast`), the groups' copy and sums come first and the other rows' follow them
// (`chunk_rows`): the same sizes as without.
typedef struct {
    float *sums, *x;
} work_memory;

// Rows of x are taken this many bytes at a time (as copied; `stored_shared.h` says why).
enum { X_CHUNK_BYTES = DSCONVERT_STORED_X_CHUNK_BYTES };

static int gemm_rows(const product_plan *plan, const dsconvert_stored_matrix *w, const float *x, size_t m, size_t n0, size_t n1,
                     float *y, size_t ldy, work_memory work);

int dsconvert_stored_gemm(int isa, const dsconvert_stored_matrix *w, const float *x, size_t m,
                          size_t n0, size_t n1, float *y, size_t ldy) {
    if (m == 0 || n1 <= n0) return 0;
    if (w->kind < DSCONVERT_STORED_F32 || w->kind > DSCONVERT_STORED_FP8_E5M2) return 3;
    if ((w->kind == DSCONVERT_STORED_FP8_E4M3 || w->kind == DSCONVERT_STORED_FP8_E5M2) && (!w->scales || w->block == 0)) return 3;
    pack_fn pack = pack_baseline;
    micro_fn micro = micro_baseline;
    int fp8 = w->kind == DSCONVERT_STORED_FP8_E4M3 || w->kind == DSCONVERT_STORED_FP8_E5M2, vbmi = 0, direct = 0, shifted = 0, bcast = 0;
    fp8_tables tables;
#if defined(__x86_64__)
    int decoder = fp8 ? dsconvert_fp8_decoder(isa) : DSCONVERT_FP8_DECODER_GENERIC;
    vbmi = decoder == DSCONVERT_FP8_DECODER_VBMI;
    shifted = decoder == DSCONVERT_FP8_DECODER_F16C;
    if (isa >= DSCONVERT_ISA_AVX512) {
        pack = shifted ? pack_fp8_shift : pack_avx512;
        micro = micro_avx512;
        direct = w->kind == DSCONVERT_STORED_BF16 || w->kind == DSCONVERT_STORED_F32;
        if (vbmi) fp8_tables_fill(&tables, w->kind == DSCONVERT_STORED_FP8_E5M2);
    } else if (isa == DSCONVERT_ISA_AVX2 && dsconvert_cpu_has_fma()) {
        if (shifted && m >= OUTPUT_VECTOR_ROWS_MIN && m < OUTPUT_VECTOR_ROWS_END) return dsconvert_stored_gemm_outputs_avx2(w, x, m, n0, n1, y, ldy);
        pack = shifted ? pack_fp8_shift : pack_avx2;
        micro = micro_avx2;
        bcast = m >= (fp8 ? BROADCAST_ROWS_FP8 : BROADCAST_ROWS);
    }
#else
    (void)isa;
#endif
    size_t kc = vbmi || shifted || (!fp8 && m >= LONG_BLOCK_ROWS) ? KC_LONG : KC;
    product_plan plan = {pack, micro, vbmi, direct, &tables, kc, m >= LONG_BLOCK_ROWS ? 2 : (fp8 ? 3 : 4), (w->cols + kc - 1) / kc * kc, bcast};
    size_t cols = w->cols, padded_cols = (cols + LANES - 1) / LANES * LANES;
    size_t chunk = X_CHUNK_BYTES / ((padded_cols ? padded_cols : 1) * sizeof(float)) / MR * MR;
    // Rows of x beyond one chunk are taken in whole pairs of groups for the broadcast kernel, so that
    // only the last chunk has rows left over; rows that fit in one chunk stay one (each chunk decodes
    // the whole weight again).
    if (bcast && chunk >= 16 && m > chunk) chunk = chunk / 16 * 16;
    chunk = chunk < MR ? MR : (chunk > m ? m : chunk);
    work_memory work = {aligned_alloc(64, (chunk * NR * LANES * sizeof(float) + 63) / 64 * 64),
                        aligned_alloc(64, (chunk * padded_cols * sizeof(float) + 63) / 64 * 64 + 64)};
    if (!work.sums || !work.x) {
        free(work.sums);
        free(work.x);
        return 2;
    }
    // Each row's sums are its own: taking the rows a chunk at a time changes no bit.
    int bad = 0;
    for (size_t r0 = 0; r0 < m; r0 += chunk) {
        size_t rows = m - r0 < chunk ? m - r0 : chunk;
        bad |= gemm_rows(&plan, w, x + r0 * cols, rows, n0, n1, y + r0 * ldy, ldy, work);
    }
    free(work.sums);
    free(work.x);
    return bad;
}

// Requests row j of the weight bytes the pack (or the in-place micro-kernel) will read `ahead` panels
// on (that many column blocks further along the same rows, or into the next rows): a panel reads only
// kc columns of each of NR rows, and a row's next block comes a whole panel's products later, too
// little and too late for the hardware's prefetchers, which also stop at a page's end (a bf16 row of
// 2,048 is one page). The rows are requested one per micro-kernel call, so the requests do not queue
// up behind each other. How far ahead is the plan's (`product_plan.ahead`).
// `span` is cols rounded up to a multiple of kc, in columns: no division, since this runs once per
// micro-kernel call (a form with three divisions made the 16-row FP8 product 6% slower).
static void prefetch_ahead(const dsconvert_stored_matrix *w, size_t kc, size_t ahead, size_t span, size_t g, size_t k0, size_t n1, size_t j) {
#if defined(__x86_64__)
    size_t cols = w->cols, size = w->kind == DSCONVERT_STORED_F32 ? 4 : (w->kind == DSCONVERT_STORED_BF16 || w->kind == DSCONVERT_STORED_F16 ? 2 : 1);
    size_t k = k0 + ahead * kc;
    for (; k >= span; k -= span) g += NR;
    if (g + j >= n1) return;
    size_t len = cols - k < kc ? cols - k : kc;
    const char *row = (const char *)w->data + ((g + j) * cols + k) * size;
    for (size_t b = 0; b < len * size; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
#else
    (void)w, (void)kc, (void)ahead, (void)span, (void)g, (void)k0, (void)n1, (void)j;
#endif
}

// x copied once into the order the micro-kernels read it: column block by column block, tile of MR
// rows by tile, and within a tile 16 columns of each row in turn, zero past the last column. A tile
// is then one contiguous stream; read in place, a checkpoint's rows are a multiple of 4 KB apart
// (V3: 28 KB), so a block's rows shared one set of the first-level cache.
static void copy_x_tiles(const float *x, size_t m, size_t cols, size_t kc, float *xp) {
    for (size_t k0 = 0; k0 < cols; k0 += kc) {
        size_t len = cols - k0 < kc ? cols - k0 : kc, width = (len + LANES - 1) / LANES * LANES;
        for (size_t i0 = 0; i0 < m; i0 += MR) {
            size_t mr = m - i0 < MR ? m - i0 : MR;
            float *tile = xp + k0 * m + i0 * width;
            for (size_t c = 0; c < width; c += LANES)
                for (size_t i = 0; i < mr; i++) {
                    float *dst = tile + (c / LANES * mr + i) * LANES;
                    size_t n = len - c < LANES ? len - c : LANES;
                    memcpy(dst, x + (i0 + i) * cols + k0 + c, n * sizeof(float));
                    if (n < LANES) memset(dst + n, 0, (LANES - n) * sizeof(float));
                }
        }
    }
}

// The first groups x 8 rows of x copied for the broadcast kernel (`bcast_avx2`): column block by
// column block, group by group, lane by lane, step by step, the group's 8 values (zero past the last
// column). A block of kc columns takes groups x 8 x kc floats, as in `copy_x_tiles`.
static void copy_x_groups(const float *x, size_t groups, size_t cols, size_t kc, float *xb) {
    for (size_t k0 = 0; k0 < cols; k0 += kc) {
        size_t len = cols - k0 < kc ? cols - k0 : kc, steps = (len + LANES - 1) / LANES;
        float *block = xb + k0 * groups * 8;
        for (size_t g = 0; g < groups; g++)
            for (size_t l = 0; l < LANES; l++)
                for (size_t step = 0; step < steps; step++) {
                    float *dst = block + ((g * LANES + l) * steps + step) * 8;
                    size_t c = step * LANES + l;
                    for (size_t r = 0; r < 8; r++) dst[r] = c < len ? x[(g * 8 + r) * cols + k0 + c] : 0.0f;
                }
    }
}

// A chunk's rows of x as the kernels take them: `groups` (even) groups of 8 through the broadcast kernel
// (copied by `copy_x_groups`, sums [group][weight row][lane][8 rows]), then `rest` rows through
// `micro` (copied by `copy_x_tiles`, sums [row][weight row][lane]).
typedef struct {
    size_t groups, rest;
    float *group_x, *group_sums, *rest_x, *rest_sums;
} chunk_rows;

// The lane sums of weight rows [g, g + nr) against every row of the chunk over the column block at k0
// (len columns): from the stored rows in place (a whole panel of bf16 or f32 at AVX-512; the last,
// partial one goes through the pack, which zeroes its missing rows) or from the packed panel.
// Returns the pack's flag. The tile loops stay apart: one loop choosing the kernel per tile made
// bf16 1408 x 2048 at 32-176 rows 5% slower (384-400 against 398-417 GFLOP/s, two at once).
static int multiply_block(const product_plan *plan, const dsconvert_stored_matrix *w, const chunk_rows *rows, size_t g, size_t nr,
                          size_t n1, size_t k0, size_t len, float *panel) {
    size_t cols = w->cols, kc = plan->kc, width = (len + LANES - 1) / LANES * LANES, m = rows->rest, requested = 0;
    const float *xp = rows->rest_x;
    float *acc = rows->rest_sums;
    int bad = 0;
#if defined(__x86_64__)
    if (plan->direct && nr == NR) {
        size_t size = w->kind == DSCONVERT_STORED_BF16 ? 2 : 4;
        const uint8_t *stored = (const uint8_t *)w->data + (g * cols + k0) * size;
        for (size_t i0 = 0; i0 < m; i0 += MR) {
            size_t mr = m - i0 < MR ? m - i0 : MR;
            micro_direct_avx512(mr, size == 2, xp + k0 * m + i0 * width, stored, cols * size, len, acc + i0 * NR * LANES, k0 == 0);
            if (requested < NR) prefetch_ahead(w, kc, plan->ahead, plan->span, g, k0, n1, requested++);
        }
        while (requested < NR) prefetch_ahead(w, kc, plan->ahead, plan->span, g, k0, n1, requested++);
        return 0;
    }
    bad = plan->vbmi ? pack_fp8_vbmi(w, (const fp8_tables *)plan->tables, g, nr, k0, len, kc, panel) : plan->pack(w, g, nr, k0, len, kc, panel);
#else
    bad = plan->pack(w, g, nr, k0, len, kc, panel);
#endif
    for (size_t j = 0; j < NR; j++)
        for (size_t c = len; c < width; c++) panel[j * kc + c] = 0.0f;
#if defined(__x86_64__)
    for (size_t q = 0, steps = width / LANES; q < rows->groups; q += 2) {
        bcast_avx2(rows->group_x + k0 * rows->groups * 8 + q * LANES * steps * 8, panel, kc, steps,
                   rows->group_sums + q * NR * LANES * 8, k0 == 0);
        if (requested < NR) prefetch_ahead(w, kc, plan->ahead, plan->span, g, k0, n1, requested++);
    }
#endif
    for (size_t i0 = 0; i0 < m; i0 += MR) {
        size_t mr = m - i0 < MR ? m - i0 : MR;
        plan->micro(mr, xp + k0 * m + i0 * width, panel, kc, width / LANES, acc + i0 * NR * LANES, k0 == 0);
        if (requested < NR) prefetch_ahead(w, kc, plan->ahead, plan->span, g, k0, n1, requested++);
    }
    while (requested < NR) prefetch_ahead(w, kc, plan->ahead, plan->span, g, k0, n1, requested++);
    return bad;
}

// Each output of weight rows [g, g + nr) from its sixteen lane sums: the groups' rows, then the rest.
static void write_outputs(const chunk_rows *rows, size_t g, size_t nr, float *y, size_t ldy) {
#if defined(__x86_64__)
    for (size_t q = 0; q < rows->groups; q++)
        for (size_t j = 0; j < nr; j++) {
            float out[8];
            // A group's sums are [lane][8 rows]: its 8 outputs reduced at once.
            dsconvert_reduce_lanes8(rows->group_sums + (q * NR + j) * LANES * 8, 8, out);
            for (size_t r = 0; r < 8; r++) y[(q * 8 + r) * ldy + g + j] = out[r];
        }
#endif
    float *rest_y = y + rows->groups * 8 * ldy;
    for (size_t i = 0; i < rows->rest; i++)
        for (size_t j = 0; j < nr; j++) rest_y[i * ldy + g + j] = reduce_lanes(rows->rest_sums + (i * NR + j) * LANES);
}

// The product for m rows of x (at most a chunk), with the working memory given.
static int gemm_rows(const product_plan *plan, const dsconvert_stored_matrix *w, const float *x, size_t m, size_t n0, size_t n1,
                     float *y, size_t ldy, work_memory work) {
    size_t cols = w->cols, kc = plan->kc, groups = plan->bcast ? m / 16 * 2 : 0, padded_cols = (cols + LANES - 1) / LANES * LANES;
    chunk_rows rows = {groups, m - groups * 8, work.x, work.sums, work.x + groups * 8 * padded_cols, work.sums + groups * 8 * NR * LANES};
    copy_x_groups(x, groups, cols, kc, rows.group_x);
    copy_x_tiles(x + groups * 8 * cols, rows.rest, cols, kc, rows.rest_x);
    float panel[NR * KC_LONG] __attribute__((aligned(64)));
    int bad = 0;
    for (size_t g = n0; g < n1; g += NR) {
        size_t nr = n1 - g < NR ? n1 - g : NR;
        if (cols == 0) memset(work.sums, 0, m * NR * LANES * sizeof(float));
        for (size_t k0 = 0; k0 < cols; k0 += kc) bad |= multiply_block(plan, w, &rows, g, nr, n1, k0, cols - k0 < kc ? cols - k0 : kc, panel);
        write_outputs(&rows, g, nr, y, ldy);
    }
    return bad;
}

int dsconvert_stored_gemm_reference(const dsconvert_stored_matrix *w, const float *x, size_t m,
                                    size_t n0, size_t n1, float *y, size_t ldy) {
    size_t cols = w->cols;
    float panel[NR * KC];
    int bad = 0;
    for (size_t n = n0; n < n1; n++) {
        for (size_t i = 0; i < m; i++) {
            float s[LANES] = {0};
            for (size_t k0 = 0; k0 < cols; k0 += KC) {
                size_t len = cols - k0 < KC ? cols - k0 : KC;
                bad |= pack_baseline(w, n, 1, k0, len, KC, panel);
                size_t steps = (len + LANES - 1) / LANES * LANES;
                for (size_t c = 0; c < steps; c++) {
                    float xv = c < len ? x[i * cols + k0 + c] : 0.0f, wv = c < len ? panel[c] : 0.0f;
                    s[c % LANES] = fmaf(xv, wv, s[c % LANES]);
                }
            }
            y[i * ldy + n] = reduce_lanes(s);
        }
    }
    return bad;
}
