/* One pass over a tensor for its statistics (see fused.py).
 *
 * Each kernel keeps LANES partial results and updates them element-wise, so that the
 * compiler turns the inner loop into SIMD code without reordering any sum: the same
 * machine code gives the same bits on every rank. Comparisons are written as selects
 * (`v < lo ? v : lo`), which is what MINPS does, and skip NaN; the sums carry NaN and
 * Inf through, which is how the caller learns of them.
 *
 * out[0..4] = min, max, sum, sum of squares, and (the *_keep kernels) the sum of squares
 * of `values - kept`, after which `kept` holds `values`.
 */
#include <stddef.h>

#define LANES 64

#define KERNELS(T, NAME)                                                              \
    void NAME##_summary(const T *values, size_t n, double *out) {                   \
        T lo[LANES], hi[LANES], total[LANES], square[LANES];                        \
        for (int k = 0; k < LANES; k++) {                                           \
            lo[k] = values[0]; hi[k] = values[0]; total[k] = 0; square[k] = 0;      \
        }                                                                           \
        size_t blocks = n / LANES;                                                  \
        for (size_t j = 0; j < blocks; j++) {                                       \
            const T *v = values + j * LANES;                                        \
            for (int k = 0; k < LANES; k++) {                                       \
                lo[k] = v[k] < lo[k] ? v[k] : lo[k];                                \
                hi[k] = v[k] > hi[k] ? v[k] : hi[k];                                \
                total[k] += v[k];                                                   \
                square[k] += v[k] * v[k];                                           \
            }                                                                       \
        }                                                                           \
        double a = lo[0], b = hi[0], s = 0, q = 0;                                  \
        for (int k = 0; k < LANES; k++) {                                           \
            a = lo[k] < a ? lo[k] : a; b = hi[k] > b ? hi[k] : b;                    \
            s += total[k]; q += square[k];                                          \
        }                                                                           \
        for (size_t i = blocks * LANES; i < n; i++) {                               \
            double v = values[i];                                                   \
            a = v < a ? v : a; b = v > b ? v : b; s += v; q += v * v;               \
        }                                                                           \
        out[0] = a; out[1] = b; out[2] = s; out[3] = q;                             \
    }                                                                               \
                                                                                    \
    void NAME##_summary_keep(const T *values, T *kept, size_t n, double *out) {     \
        T lo[LANES], hi[LANES], total[LANES], square[LANES], change[LANES];         \
        for (int k = 0; k < LANES; k++) {                                           \
            lo[k] = values[0]; hi[k] = values[0];                                   \
            total[k] = 0; square[k] = 0; change[k] = 0;                             \
        }                                                                           \
        size_t blocks = n / LANES;                                                  \
        for (size_t j = 0; j < blocks; j++) {                                       \
            const T *v = values + j * LANES;                                        \
            T *w = kept + j * LANES;                                                \
            for (int k = 0; k < LANES; k++) {                                       \
                T d = v[k] - w[k];                                                  \
                lo[k] = v[k] < lo[k] ? v[k] : lo[k];                                \
                hi[k] = v[k] > hi[k] ? v[k] : hi[k];                                \
                total[k] += v[k];                                                   \
                square[k] += v[k] * v[k];                                           \
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
            double v = values[i], d = (T)(values[i] - kept[i]);                     \
            a = v < a ? v : a; b = v > b ? v : b; s += v; q += v * v; c += d * d;   \
            kept[i] = values[i];                                                    \
        }                                                                           \
        out[0] = a; out[1] = b; out[2] = s; out[3] = q; out[4] = c;                 \
    }

KERNELS(float, f32)
KERNELS(double, f64)
