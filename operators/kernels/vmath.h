/*
 * vmath.h: elementary functions that vectorise: inline, branch-free float code
 * the compiler turns into SIMD loops, where a libm call would stop it.
 */
#ifndef DM_VMATH_H
#define DM_VMATH_H

#include <stdint.h>

/* Vectorised loops compiled for AVX-512 and AVX2 as well as the baseline, the
 * clone picked at load time (ifunc): the build has no -march. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DM_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DM_SIMD_CLONES
#endif

/*
 * exp(x) in float: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln 2),
 * exp(r) by the Cephes expf polynomial (about 1 ulp), times 2^n built in the
 * exponent bits. x is clamped to [-87, 88], where the result stays a normal
 * float (so exp of a very negative x is about 1.6e-38, not 0). Its clamps
 * vectorise only where float compares are not assumed to trap: a file using it
 * in a SIMD loop says #pragma GCC optimize("no-trapping-math") first.
 */
static inline __attribute__((always_inline)) float dm_expf(float x)
{
    union {
        int32_t i;
        float f;
    } pow2n;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    pow2n.i = ((int32_t)n + 127) << 23;
    return p * pow2n.f;
}

#endif
