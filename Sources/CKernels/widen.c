#include "widen.h"

#include "fp8_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// A bf16 value is the top half of its f32.
static inline float bf16_value(uint16_t bits) { return dsconvert_float_of((uint32_t)bits << 16); }

#if defined(__x86_64__)
// Ordinary stores up to the first 64-byte boundary of dst, whole lines streamed, the tail ordinary;
// the fence orders the streamed stores before anything the caller does next (another thread's
// product reads them).
__attribute__((target("avx512f"))) static void streaming_avx512(const uint16_t *src, float *dst, size_t count) {
    size_t i = 0;
    for (; i < count && ((uintptr_t)(dst + i) & 63) != 0; i++) dst[i] = bf16_value(src[i]);
    for (; i + 16 <= count; i += 16) {
        __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + i))), 16);
        _mm512_stream_ps(dst + i, _mm512_castsi512_ps(wide));
    }
    for (; i < count; i++) dst[i] = bf16_value(src[i]);
    _mm_sfence();
}

// The same at AVX2: from the first 64-byte boundary on, two 32-byte streaming stores per line.
__attribute__((target("avx2"))) static void streaming_avx2(const uint16_t *src, float *dst, size_t count) {
    size_t i = 0;
    for (; i < count && ((uintptr_t)(dst + i) & 63) != 0; i++) dst[i] = bf16_value(src[i]);
    for (; i + 8 <= count; i += 8) {
        __m256i wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i))), 16);
        _mm256_stream_ps(dst + i, _mm256_castsi256_ps(wide));
    }
    for (; i < count; i++) dst[i] = bf16_value(src[i]);
    _mm_sfence();
}
#endif

void dsconvert_bf16_to_f32_streaming(int isa, const uint16_t *src, float *dst, size_t count) {
#if defined(__x86_64__)
    if (isa >= DSCONVERT_ISA_AVX512) {
        streaming_avx512(src, dst, count);
        return;
    }
    if (isa == DSCONVERT_ISA_AVX2) {
        streaming_avx2(src, dst, count);
        return;
    }
#else
    (void)isa;
#endif
    for (size_t i = 0; i < count; i++) dst[i] = bf16_value(src[i]);
}
