/* One pass over a tensor for its digest and statistics (see fused.py).
 *
 * The digest is xxh3-128 of the tensor's bytes, the same as the xxhash package's
 * xxh3_128_intdigest (xxhash/xxhash.h is xxHash's own header, vendored unchanged). It
 * is fed in blocks of BLOCK_BYTES, and the statistics of each block are taken while the
 * block is still in the core's cache: memory is read once.
 *
 * Each kernel keeps LANES partial results and updates them element-wise, so that the
 * compiler turns the inner loop into SIMD code without reordering any sum. It is built
 * with -ffp-contract=off (setup.py), so `square += x * x` is a multiply and an add, never
 * a fused multiply-add: every operation is one IEEE operation in the order written, and
 * the statistics are the same bits wherever this source is compiled, whatever the SIMD
 * width (x86-64 and AArch64; a test checks them against numpy). Comparisons are written
 * as selects (`v < lo ? v : lo`), which is what MINPS does, and skip NaN; the sums carry
 * NaN and Inf through, which is how the caller learns of them.
 *
 * On x86-64 Linux the four entry points are cloned for the baseline CPU, x86-64-v3 (AVX2)
 * and x86-64-v4 (AVX-512); the loader picks the clone this CPU supports when the library
 * is loaded, so a library built on one machine runs on any other x86-64 machine, and
 * every clone gives the same bits. setup.py retries with DISTCHECK_NO_CLONES where the
 * compiler or the C library cannot clone (no ifunc, as with musl).
 *
 * out[0..4] = min, max, sum, sum of squares, and (the *_keep kernels) the sum of squares
 * of `values - kept`, after which `kept` holds `values`.
 *
 * Element types: float32 and float64 as they are; bfloat16 (its bits as uint16) and
 * float16 widened to float32, as the numpy path does. The kept copy keeps the raw
 * elements; differences are taken after widening.
 */
#include <stddef.h>
#include <stdint.h>

#define XXH_INLINE_ALL
#include "xxhash/xxhash.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(DISTCHECK_NO_CLONES)
#define ENTRY __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define ENTRY
#endif

/* The key of the sources this library was built from (setup.py passes it); the loader
 * refuses a library built from other sources than the fused.c beside it. */
#ifndef DISTCHECK_FUSED_SOURCE
#define DISTCHECK_FUSED_SOURCE "unknown"
#endif
const char *fused_source(void) { return DISTCHECK_FUSED_SOURCE; }

#define LANES 64
#define BLOCK_BYTES 16384 /* fits L1 with room to spare; a multiple of LANES elements */

/* T: the element as stored; A: the type lanes accumulate in; LOAD: element to A. */
#define KERNELS(T, A, NAME, LOAD)                                                     \
    static inline void NAME##_summary(const T *values, size_t n, double *out) {     \
        A lo[LANES], hi[LANES], total[LANES], square[LANES];                        \
        A first = LOAD(values[0]);                                                  \
        for (int k = 0; k < LANES; k++) {                                           \
            lo[k] = first; hi[k] = first; total[k] = 0; square[k] = 0;              \
        }                                                                           \
        size_t blocks = n / LANES;                                                  \
        for (size_t j = 0; j < blocks; j++) {                                       \
            const T *v = values + j * LANES;                                        \
            for (int k = 0; k < LANES; k++) {                                       \
                A x = LOAD(v[k]);                                                   \
                lo[k] = x < lo[k] ? x : lo[k];                                      \
                hi[k] = x > hi[k] ? x : hi[k];                                      \
                total[k] += x;                                                      \
                square[k] += x * x;                                                 \
            }                                                                       \
        }                                                                           \
        double a = lo[0], b = hi[0], s = 0, q = 0;                                  \
        for (int k = 0; k < LANES; k++) {                                           \
            a = lo[k] < a ? lo[k] : a; b = hi[k] > b ? hi[k] : b;                    \
            s += total[k]; q += square[k];                                          \
        }                                                                           \
        for (size_t i = blocks * LANES; i < n; i++) {                               \
            double x = LOAD(values[i]);                                             \
            a = x < a ? x : a; b = x > b ? x : b; s += x; q += x * x;               \
        }                                                                           \
        out[0] = a; out[1] = b; out[2] = s; out[3] = q;                             \
    }                                                                               \
                                                                                    \
    static inline void NAME##_summary_keep(const T *values, T *kept, size_t n,      \
                                           double *out) {                          \
        A lo[LANES], hi[LANES], total[LANES], square[LANES], change[LANES];         \
        A first = LOAD(values[0]);                                                  \
        for (int k = 0; k < LANES; k++) {                                           \
            lo[k] = first; hi[k] = first;                                           \
            total[k] = 0; square[k] = 0; change[k] = 0;                             \
        }                                                                           \
        size_t blocks = n / LANES;                                                  \
        for (size_t j = 0; j < blocks; j++) {                                       \
            const T *v = values + j * LANES;                                        \
            T *w = kept + j * LANES;                                                \
            for (int k = 0; k < LANES; k++) {                                       \
                A x = LOAD(v[k]);                                                   \
                A d = x - LOAD(w[k]);                                               \
                lo[k] = x < lo[k] ? x : lo[k];                                      \
                hi[k] = x > hi[k] ? x : hi[k];                                      \
                total[k] += x;                                                      \
                square[k] += x * x;                                                 \
                change[k] += d * d;                                                 \
                w[k] = v[k];                                                        \
            }                                                                       \
        }                                                                           \
        double a = lo[0], b = hi[0], s = 0, q = 0, c = 0;                           \
        for (int k = 0; k < LANES; k++) {                                           \
            a = lo[k] < a ? lo[k] : a; b = hi[k] > b ? hi[k] : b;                    \
            s += total[k]; q += square[k]; c += change[k];                          \
        }                                                                           \
        for (size_t i = blocks * LANES; i < n; i++) {                               \
            A x = LOAD(values[i]);                                                  \
            double d = (A)(x - LOAD(kept[i]));                                      \
            a = x < a ? x : a; b = x > b ? x : b; s += x; q += (double)x * x;       \
            c += d * d;                                                             \
            kept[i] = values[i];                                                    \
        }                                                                           \
        out[0] = a; out[1] = b; out[2] = s; out[3] = q; out[4] = c;                 \
    }

/* The xxh3-128 digest (out_digest[0] low, [1] high) and the statistics of `values`, and
 * with `kept` the change against it (then `kept` holds `values`), reading `values` once. */
#define DIGEST_KERNELS(T, NAME)                                                       \
    ENTRY void NAME##_digest_summary(const T *values, T *kept, size_t n,            \
                                     double *out, uint64_t *out_digest) {           \
        XXH3_state_t state;                                                         \
        XXH3_128bits_reset(&state);                                                 \
        const size_t block = BLOCK_BYTES / sizeof(T);                               \
        double stats[5] = {0, 0, 0, 0, 0};                                          \
        double lo = 0, hi = 0, s = 0, q = 0, c = 0;                                 \
        for (size_t start = 0; start < n; start += block) {                         \
            size_t len = n - start < block ? n - start : block;                     \
            XXH3_128bits_update(&state, values + start, len * sizeof(T));           \
            if (kept)                                                               \
                NAME##_summary_keep(values + start, kept + start, len, stats);      \
            else                                                                    \
                NAME##_summary(values + start, len, stats);                         \
            if (start == 0) {                                                       \
                lo = stats[0]; hi = stats[1];                                       \
            }                                                                       \
            lo = stats[0] < lo ? stats[0] : lo;                                     \
            hi = stats[1] > hi ? stats[1] : hi;                                     \
            s += stats[2]; q += stats[3]; c += kept ? stats[4] : 0;                 \
        }                                                                           \
        XXH128_hash_t digest = XXH3_128bits_digest(&state);                         \
        out[0] = lo; out[1] = hi; out[2] = s; out[3] = q; out[4] = c;               \
        out_digest[0] = digest.low64; out_digest[1] = digest.high64;                \
    }

static inline float bf16_to_float(uint16_t bits) {
    uint32_t word = (uint32_t)bits << 16; /* bfloat16 is the high half of a float32 */
    float value;
    __builtin_memcpy(&value, &word, sizeof value);
    return value;
}

/* float16 from its bits, exactly (normals, subnormals, Inf, NaN), with integer operations
 * and one multiply that vectorize: the exponent and mantissa shifted into a float32's
 * place, then rebiased by 2^(127 - 15). */
static inline float f16_to_float(uint16_t bits) {
    uint32_t rest = (uint32_t)(bits & 0x7fff) << 13;
    uint32_t sign = (uint32_t)(bits & 0x8000) << 16;
    float scaled, special, value;
    __builtin_memcpy(&scaled, &rest, sizeof scaled);
    scaled *= 0x1p112f;
    uint32_t inf_nan = rest | 0x7f800000u;
    __builtin_memcpy(&special, &inf_nan, sizeof special);
    value = rest >= (0x7c00u << 13) ? special : scaled;
    uint32_t word;
    __builtin_memcpy(&word, &value, sizeof word);
    word |= sign;
    __builtin_memcpy(&value, &word, sizeof value);
    return value;
}

#define AS_IS(x) (x)
#define FROM_BF16(x) bf16_to_float(x)
#define FROM_F16(x) f16_to_float(x)

KERNELS(float, float, f32, AS_IS)
KERNELS(double, double, f64, AS_IS)
KERNELS(uint16_t, float, bf16, FROM_BF16)
KERNELS(uint16_t, float, f16, FROM_F16)
DIGEST_KERNELS(float, f32)
DIGEST_KERNELS(double, f64)
DIGEST_KERNELS(uint16_t, bf16)
DIGEST_KERNELS(uint16_t, f16)
