/* Moments of host buffers in one read of memory, for pytreeparams' summaries.
 *
 * XLA:CPU and NumPy read an array once per statistic; this kernel reads it
 * from memory once for all of them: mean, the sum of squared deviations
 * (M2), min, max, the number of exact zeros and of non-finite values.
 * The array is taken in blocks of 4096 elements; each block's sums are taken
 * of x - shift, the shift being the mean of the blocks before it (for the
 * first block its own mean, from an extra sweep over it while it is in
 * cache), so the variance does not cancel whatever the data's offset, and
 * block results are merged in float64 with Chan et al.'s pairwise update. Values are read as float32 (float32
 * and bfloat16 buffers) or float64 and accumulated in 16 (8) independent
 * lanes, so the compiler vectorizes the loops without reassociating a sum.
 * Zeros and non-finite values are counted from the bits. NaN is skipped by
 * min and max here: callers that see a non-finite count recompute those.
 *
 * The extension is optional: pytreeparams falls back to NumPy without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
/* AVX-512, AVX2 and baseline x86-64 versions, picked at load time */
#define PTP_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PTP_CLONES
#endif

#define BLOCK 4096
#define NOUT 6

enum { KIND_F32 = 0, KIND_F64 = 1, KIND_BF16 = 2 };

/* out: mean, M2, min, max, zeros, nonfinite */
static inline void init_out(double *out) {
    out[0] = 0.0;
    out[1] = 0.0;
    out[2] = __builtin_inf();
    out[3] = -__builtin_inf();
    out[4] = 0.0;
    out[5] = 0.0;
}

/* Merges a block of nb elements with mean mb and M2 m2b into out, which
 * holds n elements so far (Chan, Golub and LeVeque). */
static inline void merge(double *out, double n, double nb, double mb, double m2b) {
    double total = n + nb;
    double delta = mb - out[0];
    out[0] += delta * (nb / total);
    out[1] += m2b + delta * delta * (n * nb / total);
}

/* One element: LOAD(k) gives its bits (type BITS); FT is the float type
 * they are read as, IT the signed integer type of the same width, MASK
 * clears the sign bit, values above FINITE_MAX are Inf or NaN. */
#define STEP(k, j)                                                             \
    {                                                                          \
        BITS u = LOAD(k);                                                      \
        FT v;                                                                  \
        memcpy(&v, &u, sizeof v);                                              \
        IT m = (IT)(u & MASK);                                                 \
        z[j] += (m == 0);                                                      \
        nf[j] += (m > FINITE_MAX);                                             \
        FT d = v - shift;                                                      \
        s[j] += d;                                                             \
        ss[j] += d * d;                                                        \
        mn[j] = v < mn[j] ? v : mn[j];                                         \
        mx[j] = v > mx[j] ? v : mx[j];                                         \
    }

/* One sweep over [b, e) in LANES lanes, from fresh accumulators. */
#define SWEEP(LANES)                                                           \
    {                                                                          \
        for (int j = 0; j < LANES; j++) {                                      \
            s[j] = 0;                                                          \
            ss[j] = 0;                                                         \
            mn[j] = (FT)__builtin_inf();                                       \
            mx[j] = -(FT)__builtin_inf();                                      \
            z[j] = 0;                                                          \
            nf[j] = 0;                                                         \
        }                                                                      \
        Py_ssize_t i = b;                                                      \
        for (; i + LANES <= e; i += LANES)                                     \
            for (int j = 0; j < LANES; j++)                                    \
                STEP(i + j, j)                                                 \
        for (int j = 0; i < e; i++, j++)                                       \
            STEP(i, j)                                                         \
    }

/* Each block is shifted by the mean of the blocks before it (the first
 * block by its own mean, from one extra sweep over it in cache), so the
 * sum of squares never meets a large offset; blocks are merged exactly. */
#define KERNEL(LANES)                                                          \
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {                                \
        FT s[LANES], ss[LANES], mn[LANES], mx[LANES];                          \
        IT z[LANES], nf[LANES];                                                \
        Py_ssize_t e = n - b < BLOCK ? n : b + BLOCK;                          \
        double nb = (double)(e - b), bs = 0.0, bss = 0.0, next = out[0];       \
        if (b == 0) {                                                          \
            const FT shift = 0;                                                \
            SWEEP(LANES)                                                       \
            for (int j = 0; j < LANES; j++)                                    \
                bs += s[j];                                                    \
            next = bs / nb;                                                    \
            bs = 0.0;                                                          \
        }                                                                      \
        const FT shift = (FT)next;                                             \
        SWEEP(LANES)                                                           \
        for (int j = 0; j < LANES; j++) {                                      \
            bs += s[j];                                                        \
            bss += ss[j];                                                      \
            if (mn[j] < out[2]) out[2] = mn[j];                                \
            if (mx[j] > out[3]) out[3] = mx[j];                                \
            out[4] += (double)z[j];                                            \
            out[5] += (double)nf[j];                                           \
        }                                                                      \
        /* block mean = shift + bs / nb; block M2 = bss - bs^2 / nb */         \
        merge(out, (double)b, nb, (double)shift + bs / nb, bss - bs * bs / nb); \
    }

#define FT float
#define IT int32_t
#define BITS uint32_t
#define MASK 0x7fffffffu
#define FINITE_MAX 0x7f7fffff

PTP_CLONES
static void moments_f32(const uint32_t *x, Py_ssize_t n, double *out) {
#define LOAD(k) (x[(k)])
    KERNEL(16)
#undef LOAD
}

PTP_CLONES
static void moments_bf16(const uint16_t *x, Py_ssize_t n, double *out) {
#define LOAD(k) (((uint32_t)x[(k)]) << 16)
    KERNEL(16)
#undef LOAD
}

#undef FT
#undef IT
#undef BITS
#undef MASK
#undef FINITE_MAX
#define FT double
#define IT int64_t
#define BITS uint64_t
#define MASK 0x7fffffffffffffffull
#define FINITE_MAX 0x7fefffffffffffffll

PTP_CLONES
static void moments_f64(const uint64_t *x, Py_ssize_t n, double *out) {
#define LOAD(k) (x[(k)])
    KERNEL(8)
#undef LOAD
}

/* moments(out, addrs, sizes, kinds, k): for each of k segments, fills NOUT
 * doubles of out (mean, M2, min, max, zeros, nonfinite). All arguments but
 * k are addresses of contiguous arrays (float64 out[k * NOUT], int64
 * addrs/sizes/kinds) that the caller keeps alive. Runs without the GIL. */
static PyObject *py_moments(PyObject *self, PyObject *args) {
    unsigned long long out_a, addrs_a, sizes_a, kinds_a;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "KKKKn", &out_a, &addrs_a, &sizes_a, &kinds_a, &k))
        return NULL;
    double *out = (double *)(uintptr_t)out_a;
    const int64_t *addrs = (const int64_t *)(uintptr_t)addrs_a;
    const int64_t *sizes = (const int64_t *)(uintptr_t)sizes_a;
    const int64_t *kinds = (const int64_t *)(uintptr_t)kinds_a;
    for (Py_ssize_t s = 0; s < k; s++) {
        if (kinds[s] < KIND_F32 || kinds[s] > KIND_BF16 || sizes[s] < 0) {
            PyErr_Format(PyExc_ValueError, "bad segment %zd", s);
            return NULL;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t s = 0; s < k; s++) {
        double *o = out + NOUT * s;
        const void *p = (const void *)(uintptr_t)addrs[s];
        Py_ssize_t n = (Py_ssize_t)sizes[s];
        init_out(o);
        switch (kinds[s]) {
        case KIND_F32:
            moments_f32((const uint32_t *)p, n, o);
            break;
        case KIND_F64:
            moments_f64((const uint64_t *)p, n, o);
            break;
        default:
            moments_bf16((const uint16_t *)p, n, o);
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"moments", py_moments, METH_VARARGS,
     "moments(out, addrs, sizes, kinds, k): mean, M2, min, max, zeros, nonfinite of k buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
