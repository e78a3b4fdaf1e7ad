// The AVX2 stored product of FP8 weights with the vector over weight rows (output columns): the
// form for a routed expert's few rows of x (V3 at 512 tokens: a median of 13) on a host without
// AVX-512.
//
// `dsconvert_stored_gemm` defines the sum: sixteen lane sums per output, lane l taking the terms
// k ≡ l (mod 16) in increasing k by fused multiply-adds, then a fixed tree. Its other AVX2 kernels
// put the vector over k (`micro_avx2`: 10 loads per 12 fused multiply-adds) or over 8 rows of x
// (`bcast_avx2`: 8 per 12, but only for whole pairs of groups of 8 rows). Here a ymm register holds
// one lane's sums for 8 weight rows and each x value is broadcast into it: a tile of R ≤ 6 rows of
// x by a panel of 16 weight rows holds 2R sums and loads R + 2 per 2R, for any number of rows, and
// a row's 16 lane sums come out as vectors over the panel's 16 outputs, so adding them is 15
// vector additions per row and panel. On a Zen 3 host (FMA peak 103 GFLOP/s a core), 13 rows of a
// 2048 x 7168 FP8 weight: the multiplying alone (one panel decoded and reused) at 83 GFLOP/s a core,
// the whole product at 58.7 against 52.2 with the other kernels.
//
// The price is the panel's layout, [step][lane][16 weight rows]: the codes are transposed before
// they are decoded (`transpose_code_pairs`), and decoding takes 8.2 ns per 64 codes against 6.7
// for the row-major panel of the other kernels (a C harness, codes in the second-level cache). What
// pays is the rows of x: from 5 to 31 rows the product is faster than with the other kernels, from
// 32 the broadcast kernel's cheaper panel wins (stored_gemm.c, OUTPUT_VECTOR_ROWS_MIN and
// OUTPUT_VECTOR_ROWS_END, has the figures).
//
// Each value is decoded as `fp8_shift.inc` decodes it (through f16) and multiplied by its row's
// scale: the same f32 the other decoders give, so the same bits.
#include "stored_outputs.h"
#include "stored_shared.h"

#include <stdlib.h>
#include <string.h>

#include "fp8_encode.h"
#include "fp8_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "fp8_vbmi.inc"
#include "fp8_shift.inc"

// Weight rows per panel (two ymm registers), columns per block, rows of x per tile at most, lanes.
enum { PANEL_ROWS = 16, BLOCK = 512, TILE = 6, LANES = DSCONVERT_STORED_LANES };

// Floats per step of the panel ([step][lane][PANEL_ROWS]): a step's 16 lanes and one line of padding,
// so that a lane's lines over the steps do not all fall in a few sets of the first-level cache.
enum { STEP_STRIDE = LANES * PANEL_ROWS + PANEL_ROWS };

// Eight codes of each of 8 rows (r[i]'s low 8 bytes, or with `high` its high 8) transposed as pairs
// of columns: out[j]'s 16-bit lane i holds row i's codes of columns 2j (low byte) and 2j + 1 (high
// byte), so each column's codes come out of it by a shift or a mask, not by another unpack. Twelve
// unpacks (16, 32, then 64 bits), all within 128 bits.
__attribute__((target("avx2"), always_inline)) static inline void transpose_code_pairs(const __m128i r[8], const int high, __m128i out[4]) {
    __m128i a0 = high ? _mm_unpackhi_epi16(r[0], r[1]) : _mm_unpacklo_epi16(r[0], r[1]);
    __m128i a1 = high ? _mm_unpackhi_epi16(r[2], r[3]) : _mm_unpacklo_epi16(r[2], r[3]);
    __m128i a2 = high ? _mm_unpackhi_epi16(r[4], r[5]) : _mm_unpacklo_epi16(r[4], r[5]);
    __m128i a3 = high ? _mm_unpackhi_epi16(r[6], r[7]) : _mm_unpacklo_epi16(r[6], r[7]);
    __m128i b0 = _mm_unpacklo_epi32(a0, a1), b1 = _mm_unpackhi_epi32(a0, a1);
    __m128i b2 = _mm_unpacklo_epi32(a2, a3), b3 = _mm_unpackhi_epi32(a2, a3);
    out[0] = _mm_unpacklo_epi64(b0, b2);
    out[1] = _mm_unpackhi_epi64(b0, b2);
    out[2] = _mm_unpacklo_epi64(b1, b3);
    out[3] = _mm_unpackhi_epi64(b1, b3);
}

// A column's 8 codes, each in the high byte of a 16-bit lane (the low byte is ignored), as f32
// times `factor`: E5M2's code << 8 is its f16 (the low byte must then be zero); E4M3's is shifted
// right by one with the sign kept and masked to the sign and the seven fields (0xBF80), the f16 of
// value × 2^-8 that `fp8_shift.inc` decodes.
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline __m256 decode_column(const int E5M2_, __m128i high_bytes, __m256 factor) {
    __m128i halves = E5M2_ ? high_bytes : _mm_and_si128(_mm_srai_epi16(high_bytes, 1), _mm_set1_epi16((short)0xBF80));
    return _mm256_mul_ps(_mm256_cvtph_ps(halves), factor);
}

// Eight (WIDE_ = 0) or sixteen (WIDE_ = 1: one 16-byte load per row instead of two 8-byte ones)
// columns of 8 weight rows (row i at codes + i * stride) decoded into the panel, column q's 8
// values at dst + q · PANEL_ROWS: `factor` holds each row's scale (× 2^8 for E4M3). *special: the
// codes' bytes with the sign cleared, max-ed in, for the NaN/Inf test.
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void decode_columns(const int E5M2_, const int WIDE_, const uint8_t *codes,
                                                                                         size_t stride, __m256 factor, float *dst,
                                                                                         __m128i *special) {
    __m128i r[8], t[8];
    for (size_t i = 0; i < 8; i++)
        r[i] = WIDE_ ? _mm_loadu_si128((const __m128i *)(codes + i * stride)) : _mm_loadl_epi64((const __m128i *)(codes + i * stride));
    transpose_code_pairs(r, 0, t);
    if (WIDE_) transpose_code_pairs(r, 1, t + 4);
    const __m128i magnitude = _mm_set1_epi8(0x7F), high = _mm_set1_epi16((short)0xFF00);
    for (size_t j = 0; j < (WIDE_ ? 8 : 4); j++) {
        *special = _mm_max_epu8(*special, _mm_and_si128(t[j], magnitude));
        _mm256_store_ps(dst + 2 * j * PANEL_ROWS, decode_column(E5M2_, _mm_slli_epi16(t[j], 8), factor));
        _mm256_store_ps(dst + (2 * j + 1) * PANEL_ROWS, decode_column(E5M2_, E5M2_ ? _mm_and_si128(t[j], high) : t[j], factor));
    }
}

// Eight columns [c, c + 8) of the half's rows one value at a time (rows past `rows` and columns
// past `len` as zeros), each checked. Two divisions a value: this takes only the edges (the last
// columns, a partial half, a scale the f16 decoder does not take) and blocks that are not a
// multiple of 8 columns, which no published checkpoint has.
static uint32_t pack_group_checked(const dsconvert_stored_matrix *w, size_t r0, size_t rows, size_t k0, size_t c, size_t len, float *dst) {
    size_t cols = w->cols, block = w->block, per_row = (cols + block - 1) / block;
    int e5m2 = w->kind == DSCONVERT_STORED_FP8_E5M2;
    uint32_t bad = 0;
    for (size_t q = 0; q < 8; q++)
        for (size_t r = 0; r < 8; r++) {
            size_t col = k0 + c + q;
            dst[q * PANEL_ROWS + r] = r < rows && c + q < len
                ? dsconvert_fp8_checked_value(((const uint8_t *)w->data)[(r0 + r) * cols + col], w->scales[((r0 + r) / block) * per_row + col / block], e5m2, &bad)
                : 0.0f;
        }
    return bad;
}

// The f16 decoder's factor for 8 weight rows' scales over one scale block of columns (each × 2^8
// for E4M3), in *factor; 0 when a row is missing (`rows` < 8) or a scale is one the decoder does
// not take (`fp8_shift_scale_fits`): those columns go one value at a time.
__attribute__((target("avx2"))) static int half_factor(const float *const *row_scales, size_t rows, size_t column_block, int e5m2,
                                                       __m256 *factor) {
    float scales[8];
    if (rows < 8) return 0;
    for (size_t r = 0; r < 8; r++) {
        scales[r] = row_scales[r][column_block];
        if (!fp8_shift_scale_fits(scales[r], e5m2)) return 0;
    }
    *factor = _mm256_mul_ps(_mm256_loadu_ps(scales), _mm256_set1_ps(e5m2 ? 1.0f : 0x1p8f));
    return 1;
}

// The panel of weight rows [g, g + 16) (those at or past n1 as zeros) over columns [k0, k0 + len),
// into p: [step][lane][PANEL_ROWS] (`steps` steps, zero past len). Returns 1 if a code is NaN/Inf or a
// product not finite. Both halves of each 8 or 16 columns go in turn, so each 64-byte line of the
// panel is complete before the next columns': half by half, the 32 KB panel's lines were fetched
// twice (10.4 against 8.9 ns per 64 codes). The scales are read once per scale block of columns
// (stepped through, not divided for); where both halves' scales go through the f16 decoder, the
// block's columns run in a loop of nothing else, and the rest (the last columns, rows past n1, a
// block that is not a multiple of 8 columns, a scale the decoder does not take) one value at a
// time. Inlined with a constant E5M2_.
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline int pack_panel_kind(const int E5M2_, const dsconvert_stored_matrix *w,
                                                                                        size_t g, size_t n1, size_t k0, size_t len,
                                                                                        size_t steps, float *p) {
    size_t cols = w->cols, block = w->block, per_row = (cols + block - 1) / block, end = steps * LANES;
    size_t rows[2];
    for (size_t h = 0; h < 2; h++) rows[h] = g + 8 * h >= n1 ? 0 : (n1 - g - 8 * h < 8 ? n1 - g - 8 * h : 8);
    uint32_t bad = 0;
    __m128i special = _mm_setzero_si128();
    // Each present row's line of scales (a division per row and panel; the column blocks are
    // stepped through).
    size_t column_block = k0 / block;
    const float *row_scales[PANEL_ROWS];
    for (size_t r = 0; r < rows[0] + rows[1]; r++) row_scales[r] = w->scales + ((g + r) / block) * per_row;
    const uint8_t *codes = (const uint8_t *)w->data + g * cols + k0;
    size_t whole = len / 8 * 8;
    for (size_t c0 = 0; c0 < end; column_block++) {
        size_t c1 = block % 8 == 0 ? (column_block + 1) * block - k0 : end;
        c1 = c1 < end ? c1 : end;
        __m256 factor[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        int fits[2];
        // A segment wholly in the padding past len (a block boundary there) has no scale to read.
        for (size_t h = 0; h < 2; h++)
            fits[h] = block % 8 == 0 && c0 < len && half_factor(row_scales + 8 * h, rows[h], column_block, E5M2_, &factor[h]);
        size_t c = c0;
        if (fits[0] && fits[1]) {
            const __m256 f0 = factor[0], f1 = factor[1];
            size_t fast_end = c1 < whole ? c1 : whole;
            if (c % LANES == 0)
                for (; c + LANES <= fast_end; c += LANES) {
                    float *dst = p + (c / LANES) * STEP_STRIDE;
                    decode_columns(E5M2_, 1, codes + c, cols, f0, dst, &special);
                    decode_columns(E5M2_, 1, codes + 8 * cols + c, cols, f1, dst + 8, &special);
                }
            for (; c < fast_end; c += 8) {
                float *dst = p + (c / LANES) * STEP_STRIDE + (c % LANES) * PANEL_ROWS;
                decode_columns(E5M2_, 0, codes + c, cols, f0, dst, &special);
                decode_columns(E5M2_, 0, codes + 8 * cols + c, cols, f1, dst + 8, &special);
            }
        }
        for (; c < c1; c += 8)
            for (size_t h = 0; h < 2; h++) {
                float *dst = p + (c / LANES) * STEP_STRIDE + (c % LANES) * PANEL_ROWS + 8 * h;
                if (fits[h] && c + 8 <= len) {
                    decode_columns(E5M2_, 0, codes + 8 * h * cols + c, cols, factor[h], dst, &special);
                } else {
                    bad |= pack_group_checked(w, g + 8 * h, rows[h], k0, c, len, dst);
                }
            }
        c0 = c1;
    }
    // NaN (E4M3 0x7F/0xFF) or Inf/NaN (E5M2 0x7C-0x7F, 0xFC-0xFF) among the decoded codes.
    __m128i flagged = _mm_cmpgt_epi8(special, _mm_set1_epi8(E5M2_ ? 0x7B : 0x7E));
    return bad != 0 || !_mm_testz_si128(flagged, flagged);
}

__attribute__((target("avx2,fma,f16c"))) static int pack_panel(const dsconvert_stored_matrix *w, size_t g, size_t n1, size_t k0, size_t len,
                                                             size_t steps, float *p) {
    return w->kind == DSCONVERT_STORED_FP8_E5M2 ? pack_panel_kind(1, w, g, n1, k0, len, steps, p) : pack_panel_kind(0, w, g, n1, k0, len, steps, p);
}

// Lane l's sums of R rows of x against the panel's 16 weight rows over `steps` steps: x at
// xl[step * m + i] (this lane's values, [step][row]), the panel's at pl[step * STEP_STRIDE ..]; sums at
// s[i * LANES * PANEL_ROWS] (row i's lane l, 16 outputs), zeroed first when `first`.
__attribute__((target("avx2,fma"), always_inline)) static inline void lane_tile(const size_t R, const float *xl, size_t m, const float *pl,
                                                                             size_t steps, float *s, int first) {
    __m256 acc[TILE][2];
    for (size_t i = 0; i < R; i++)
        for (size_t v = 0; v < 2; v++) acc[i][v] = first ? _mm256_setzero_ps() : _mm256_load_ps(s + i * LANES * PANEL_ROWS + 8 * v);
    for (size_t step = 0; step < steps; step++) {
        __m256 w0 = _mm256_load_ps(pl + step * STEP_STRIDE), w1 = _mm256_load_ps(pl + step * STEP_STRIDE + 8);
        for (size_t i = 0; i < R; i++) {
            __m256 b = _mm256_broadcast_ss(xl + step * m + i);
            acc[i][0] = _mm256_fmadd_ps(b, w0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(b, w1, acc[i][1]);
        }
    }
    for (size_t i = 0; i < R; i++)
        for (size_t v = 0; v < 2; v++) _mm256_store_ps(s + i * LANES * PANEL_ROWS + 8 * v, acc[i][v]);
}

__attribute__((target("avx2,fma"))) static void lane_rows(size_t r, const float *xl, size_t m, const float *pl, size_t steps, float *s,
                                                          int first) {
    switch (r) {
    case 6: lane_tile(6, xl, m, pl, steps, s, first); break;
    case 5: lane_tile(5, xl, m, pl, steps, s, first); break;
    case 4: lane_tile(4, xl, m, pl, steps, s, first); break;
    case 3: lane_tile(3, xl, m, pl, steps, s, first); break;
    case 2: lane_tile(2, xl, m, pl, steps, s, first); break;
    default: lane_tile(1, xl, m, pl, steps, s, first); break;
    }
}

// x's chunk as the kernel reads it: block by block of BLOCK columns, [lane][step][row], zero past
// the last column.
static void copy_x(const float *x, size_t m, size_t cols, float *xt) {
    for (size_t k0 = 0; k0 < cols; k0 += BLOCK) {
        size_t len = cols - k0 < BLOCK ? cols - k0 : BLOCK, steps = (len + LANES - 1) / LANES;
        float *block = xt + k0 * m;
        for (size_t l = 0; l < LANES; l++)
            for (size_t step = 0; step < steps; step++) {
                size_t c = step * LANES + l;
                float *dst = block + (l * steps + step) * m;
                for (size_t i = 0; i < m; i++) dst[i] = c < len ? x[i * cols + k0 + c] : 0.0f;
            }
    }
}

// Each row's output from its 16 lane sums ([lane][16 outputs]), added as `dsconvert_stored_gemm`
// defines, for the panel's 16 outputs at once; the first `nr` are written.
__attribute__((target("avx2"))) static void write_row(const float *s, size_t nr, float *y) {
    float out[PANEL_ROWS];
    for (size_t v = 0; v < 2; v++) dsconvert_reduce_lanes8(s + 8 * v, PANEL_ROWS, out + 8 * v);
    memcpy(y, out, nr * sizeof(float));
}

// Requests the codes of the panel after (g, k0) (the next block of the same rows, or the first of the
// next rows): its row `j`, one per lane, so the requests spread over the panel's work.
static void prefetch_next(const dsconvert_stored_matrix *w, size_t g, size_t k0, size_t n1, size_t j) {
    size_t cols = w->cols, k = k0 + BLOCK;
    if (k >= cols) k = 0, g += PANEL_ROWS;
    if (g + j >= n1) return;
    size_t len = cols - k < BLOCK ? cols - k : BLOCK;
    const char *row = (const char *)w->data + (g + j) * cols + k;
    for (size_t b = 0; b < len; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
}

// The product for m rows of x (at most a chunk, copied at xt), sums in `sums` (m x LANES x PANEL_ROWS).
static int product_rows(const dsconvert_stored_matrix *w, const float *x, size_t m, size_t n0, size_t n1, float *y, size_t ldy,
                        float *xt, float *sums, float *panel) {
    size_t cols = w->cols, tiles = (m + TILE - 1) / TILE;
    copy_x(x, m, cols, xt);
    int bad = 0;
    // No columns: every output is the sum of no terms, +0 (the blocks below never run).
    if (cols == 0) memset(sums, 0, m * LANES * PANEL_ROWS * sizeof(float));
    for (size_t g = n0; g < n1; g += PANEL_ROWS) {
        for (size_t k0 = 0; k0 < cols; k0 += BLOCK) {
            size_t len = cols - k0 < BLOCK ? cols - k0 : BLOCK, steps = (len + LANES - 1) / LANES;
            bad |= pack_panel(w, g, n1, k0, len, steps, panel);
            const float *xb = xt + k0 * m;
            for (size_t l = 0; l < LANES; l++) {
                prefetch_next(w, g, k0, n1, l);
                // Tiles as even as they go: 13 rows are 5 + 4 + 4, each with enough sums (8-12) to
                // keep both fused multiply-add units busy.
                for (size_t t = 0, i0 = 0; t < tiles; t++) {
                    size_t r = (m - i0 + (tiles - t) - 1) / (tiles - t);
                    lane_rows(r, xb + l * steps * m + i0, m, panel + l * PANEL_ROWS, steps, sums + (i0 * LANES + l) * PANEL_ROWS, k0 == 0);
                    i0 += r;
                }
            }
        }
        size_t nr = n1 - g < PANEL_ROWS ? n1 - g : PANEL_ROWS;
        for (size_t i = 0; i < m; i++) write_row(sums + i * LANES * PANEL_ROWS, nr, y + i * ldy + g);
    }
    return bad;
}

int dsconvert_stored_gemm_outputs_avx2(const dsconvert_stored_matrix *w, const float *x, size_t m, size_t n0, size_t n1, float *y,
                                       size_t ldy) {
    size_t cols = w->cols, padded = (cols + LANES - 1) / LANES * LANES;
    size_t chunk = DSCONVERT_STORED_X_CHUNK_BYTES / ((padded ? padded : 1) * sizeof(float));
    chunk = chunk < TILE ? TILE : (chunk > m ? m : chunk);
    float *xt = aligned_alloc(64, (chunk * padded * sizeof(float) + 63) / 64 * 64);
    float *sums = aligned_alloc(64, chunk * LANES * PANEL_ROWS * sizeof(float));
    float *panel = aligned_alloc(64, (BLOCK / LANES) * STEP_STRIDE * sizeof(float));
    int bad = 0;
    if (!xt || !sums || !panel) {
        bad = 2;
    } else {
        for (size_t r0 = 0; r0 < m; r0 += chunk) {
            size_t rows = m - r0 < chunk ? m - r0 : chunk;
            bad |= product_rows(w, x + r0 * cols, rows, n0, n1, y + r0 * ldy, ldy, xt, sums, panel);
        }
    }
    free(xt);
    free(sums);
    free(panel);
    return bad;
}
#endif
