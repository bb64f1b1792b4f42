/*
 * conv.h: private to io/ (npy.c, spill.c). Bulk conversions between float32 and
 * the stored dtypes (f16, bf16, f64), run over whole chunks.
 *
 * Why not a loop over dm_f32_to_f16: the scalar conversion costs a few ns per
 * value, and a 30 GB stream holds billions of them, enough to make the CPU and
 * not the disk the bottleneck. On x86 with F16C the hardware converts 8 values
 * per instruction with the same round-to-nearest-even result as dm_f32_to_f16
 * (tests compare the two); elsewhere the scalar dm.c functions are used.
 * Sources and destinations need no alignment (memcpy loads), since .npy data in
 * a mapped file may start at any offset.
 */
#ifndef DM_IO_CONV_H
#define DM_IO_CONV_H

#include "compute.h"
#include "dm.h"
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DM_CONV_X86 1

__attribute__((target("avx,f16c"))) static inline void dm_conv_f16_to_f32_f16c(const void *src, float *dst,
                                                                         size_t n)
{
    const char *s = src;
    size_t i = 0, nv = n & ~(size_t)7;
    for (; i < nv; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(s + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = dm_f16_to_f32(h);
    }
}

__attribute__((target("avx,f16c"))) static inline void dm_conv_f32_to_f16_f16c(const float *src, void *dst,
                                                                         size_t n)
{
    char *d = dst;
    size_t i = 0, nv = n & ~(size_t)7;
    for (; i < nv; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(d + 2 * i), h);
    }
    for (; i < n; i++) {
        uint16_t h = dm_f32_to_f16(src[i]);
        memcpy(d + 2 * i, &h, 2);
    }
}

/* The compute context read the CPU and DMICA_NO_F16C once (compute.h). */
static inline int dm_conv_have_f16c(void) { return dm_compute_default()->f16c; }
#endif

/* n IEEE halves at src into float32. */
static inline void dm_conv_f16_to_f32(const void *src, float *dst, size_t n)
{
#ifdef DM_CONV_X86
    if (dm_conv_have_f16c()) {
        dm_conv_f16_to_f32_f16c(src, dst, n);
        return;
    }
#endif
    const char *s = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = dm_f16_to_f32(h);
    }
}

static inline void dm_conv_f32_to_f16(const float *src, void *dst, size_t n)
{
#ifdef DM_CONV_X86
    if (dm_conv_have_f16c()) {
        dm_conv_f32_to_f16_f16c(src, dst, n);
        return;
    }
#endif
    char *d = dst;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = dm_f32_to_f16(src[i]);
        memcpy(d + 2 * i, &h, 2);
    }
}

/* bfloat16 is the top half of a float32: widening is a shift. */
static inline void dm_conv_bf16_to_f32(const void *src, float *dst, size_t n)
{
    const char *s = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        uint32_t x = (uint32_t)h << 16;
        memcpy(dst + i, &x, 4);
    }
}

static inline void dm_conv_f32_to_bf16(const float *src, void *dst, size_t n)
{
    char *d = dst;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = dm_f32_to_bf16(src[i]);
        memcpy(d + 2 * i, &h, 2);
    }
}

static inline void dm_conv_f64_to_f32(const void *src, float *dst, size_t n)
{
    const char *s = src;
    for (size_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, s + 8 * i, 8);
        dst[i] = (float)v;
    }
}

static inline void dm_conv_f32_to_f64(const float *src, void *dst, size_t n)
{
    char *d = dst;
    for (size_t i = 0; i < n; i++) {
        double v = src[i];
        memcpy(d + 8 * i, &v, 8);
    }
}

/* n values of dtype t at src into float32; -1 (no message) for a non-float t. */
static inline int dm_conv_to_f32(dm_dtype t, const void *src, float *dst, size_t n)
{
    switch (t) {
    case DM_F32: memcpy(dst, src, n * 4); return 0;
    case DM_F16: dm_conv_f16_to_f32(src, dst, n); return 0;
    case DM_BF16: dm_conv_bf16_to_f32(src, dst, n); return 0;
    case DM_F64: dm_conv_f64_to_f32(src, dst, n); return 0;
    default: return -1;
    }
}

static inline int dm_conv_from_f32(dm_dtype t, const float *src, void *dst, size_t n)
{
    switch (t) {
    case DM_F32: memcpy(dst, src, n * 4); return 0;
    case DM_F16: dm_conv_f32_to_f16(src, dst, n); return 0;
    case DM_BF16: dm_conv_f32_to_bf16(src, dst, n); return 0;
    case DM_F64: dm_conv_f32_to_f64(src, dst, n); return 0;
    default: return -1;
    }
}

#endif
