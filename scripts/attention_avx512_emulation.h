// The AVX-512 attention tile's intrinsics as plain C, for `scripts/attention-avx512-emulation.sh`:
// force-included before Sources/CKernels/attention.c (built with DSCONVERT_EMULATE_AVX512), so the
// tile runs on a host without AVX-512. Each lane's product is one fmaf, as the instruction's is; a
// 64-byte load counts the addresses that are not 64-byte aligned (the instruction would fault on them);
// a masked store writes only the masked lanes.
#ifndef ATTENTION_AVX512_EMULATION_H
#define ATTENTION_AVX512_EMULATION_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct { float f[16]; } emu_m512;
typedef unsigned short emu_mask16;
extern long emu512_loads, emu512_misaligned;

static inline emu_m512 emu512_setzero_ps(void) {
    emu_m512 r;
    for (int l = 0; l < 16; l++) r.f[l] = 0.0f;
    return r;
}
static inline emu_m512 emu512_load_ps(const float *p) {
    emu512_loads++;
    if ((uintptr_t)p & 63) emu512_misaligned++;
    emu_m512 r;
    memcpy(r.f, p, 64);
    return r;
}
static inline emu_m512 emu512_set1_ps(float x) {
    emu_m512 r;
    for (int l = 0; l < 16; l++) r.f[l] = x;
    return r;
}
static inline emu_m512 emu512_fmadd_ps(emu_m512 a, emu_m512 b, emu_m512 c) {
    emu_m512 r;
    for (int l = 0; l < 16; l++) r.f[l] = fmaf(a.f[l], b.f[l], c.f[l]);
    return r;
}
static inline void emu512_mask_storeu_ps(float *p, emu_mask16 m, emu_m512 v) {
    for (int l = 0; l < 16; l++)
        if (m >> l & 1) p[l] = v.f[l];
}

// After <immintrin.h>, so only attention.c's uses are renamed.
#define __m512 emu_m512
#define __mmask16 emu_mask16
#define _mm512_setzero_ps emu512_setzero_ps
#define _mm512_load_ps emu512_load_ps
#define _mm512_set1_ps emu512_set1_ps
#define _mm512_fmadd_ps emu512_fmadd_ps
#define _mm512_mask_storeu_ps emu512_mask_storeu_ps

#endif
