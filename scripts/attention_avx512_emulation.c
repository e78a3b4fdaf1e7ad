// Runs `dsconvert_causal_attention` at the baseline, AVX2 and (emulated) AVX-512 levels on shapes that
// cover the tile's edges (one and two 16-key panels, a last group of 1-15 keys, V3's widths 512 + 64
// and 192 / 128, blocks of 1 to 256 queries, rows with a gap between them) and checks that the three
// give the same bits, that no output past a row's width is written, and that every emulated 512-bit
// load was 64-byte aligned. Built by scripts/attention-avx512-emulation.sh, under AddressSanitizer.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "fp8_kernels.h"

long emu512_loads, emu512_misaligned;

int dsconvert_cpu_has_fma(void) { return __builtin_cpu_supports("fma"); }

static uint64_t state = 12345;
static float uniform(void) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((state >> 40) & 0xFFFFFF) / 16777216.0f * 4.0f - 2.0f;
}

// seq rows of w values, `gap` NaNs between rows (and one past the end), so a read or write past a
// row's width shows.
static float *rows_of(size_t seq, size_t w, size_t gap) {
    size_t ld = w + gap;
    float *p = malloc((seq * ld + 1) * sizeof(float));
    for (size_t i = 0; i < seq * ld + 1; i++) p[i] = NAN;
    for (size_t j = 0; j < seq; j++)
        for (size_t d = 0; d < w; d++) p[j * ld + d] = uniform();
    return p;
}

// The levels compared: the first is the baseline, the last the emulated AVX-512 one.
static int level_codes[3], levels;

static int run(size_t seq, size_t d1, size_t d2, size_t dv, size_t block, size_t gap) {
    size_t dq = d1 + d2, ldo = dv + gap;
    float *q = rows_of(seq, dq, gap), *k1 = rows_of(seq, d1, gap), *k2 = rows_of(seq, d2, d2 ? gap : 0), *v = rows_of(seq, dv, gap);
    float *o[3] = {0};
    int bad = 0;
    for (int level = 0; level < levels; level++) {
        o[level] = malloc(seq * ldo * sizeof(float));
        for (size_t i = 0; i < seq * ldo; i++) o[level][i] = NAN;
        int level_code = level_codes[level];
        int rc = dsconvert_causal_attention(level_code, seq, block, (dsconvert_rows){q, dq + gap, dq}, (dsconvert_rows){k1, d1 + gap, d1},
                                            (dsconvert_rows){k2, d2 ? d2 + gap : 1, d2}, (dsconvert_rows){v, dv + gap, dv}, 0.125f, o[level], ldo);
        if (rc) {
            printf("level %d: dsconvert_causal_attention returned %d\n", level_code, rc);
            bad = 1;
        }
    }
    size_t mismatches = 0;
    for (size_t i = 0; i < seq * ldo && !bad; i++) {
        uint32_t b[3] = {0};
        for (int level = 0; level < levels; level++) memcpy(&b[level], &o[level][i], 4);
        int same = i % ldo < dv ? b[0] == b[levels - 1] && b[0] == b[1] : isnan(o[0][i]) && isnan(o[1][i]) && isnan(o[levels - 1][i]);
        mismatches += !same;
    }
    printf("seq %4zu, widths %3zu + %3zu, values %3zu, blocks of %3zu, gap %zu: %s\n", seq, d1, d2, dv, block, gap,
           bad ? "failed" : mismatches ? "DIFFERENT BITS" : "same bits");
    free(q), free(k1), free(k2), free(v);
    for (int level = 0; level < levels; level++) free(o[level]);
    return bad || mismatches;
}

int main(void) {
    // seq, key width (nope), key width (rope), value width, block
    static const size_t cases[][5] = {{1, 8, 0, 5, 128},     {37, 20, 12, 17, 16},   {130, 128, 64, 128, 128}, {200, 64, 0, 33, 64},
                                      {1024, 16, 8, 16, 256}, {77, 512, 64, 512, 64}, {9, 8, 0, 8, 128},        {5, 512, 64, 512, 64},
                                      {21, 128, 64, 128, 13}, {45, 128, 64, 192, 7}, {16, 3, 1, 1, 1},         {17, 7, 0, 31, 12},
                                      {33, 16, 16, 48, 5},    {100, 40, 8, 47, 100},  {64, 192, 0, 128, 24}};
    // Line by line, so what ran before a sanitizer's abort is not lost in a pipe's buffer.
    setvbuf(stdout, NULL, _IOLBF, 0);
    // The AVX2 level too where the CPU has it (and FMA), else the baseline against the emulation alone.
    level_codes[levels++] = DSCONVERT_ISA_BASELINE;
    if (__builtin_cpu_supports("avx2") && dsconvert_cpu_has_fma()) level_codes[levels++] = DSCONVERT_ISA_AVX2;
    level_codes[levels++] = DSCONVERT_ISA_AVX512;
    int failures = 0;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (size_t gap = 0; gap <= 5; gap += 5) failures += run(cases[c][0], cases[c][1], cases[c][2], cases[c][3], cases[c][4], gap);
    printf("emulated 512-bit loads %ld, not 64-byte aligned %ld; %d of %zu cases failed\n", emu512_loads, emu512_misaligned, failures,
           2 * sizeof cases / sizeof cases[0]);
    return failures != 0 || emu512_misaligned != 0 || emu512_loads == 0;
}
