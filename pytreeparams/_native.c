/* One-pass moments of host buffers, for pytreeparams' summaries.
 *
 * XLA:CPU and NumPy read an array once per statistic; this kernel reads it
 * once for all of them: the sum and sum of squares of x - shift, min, max,
 * the number of exact zeros and of non-finite values. Values are read as
 * float32 (float32 and bfloat16 buffers) or float64 and accumulated in
 * 16 (8) independent lanes per block of 4096 elements, so the compiler
 * vectorizes the loop without reassociating a single sum; block totals are
 * added in float64. Zeros and non-finite values are counted from the bits.
 * NaN is skipped by min and max here: callers that see a non-finite count
 * recompute those with NaN propagation.
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

enum { KIND_F32 = 0, KIND_F64 = 1, KIND_BF16 = 2 };

/* out: sum d, sum d*d, min, max, zeros, nonfinite, shift */
static inline void init_out(double *out) {
    out[0] = 0.0;
    out[1] = 0.0;
    out[2] = __builtin_inf();
    out[3] = -__builtin_inf();
    out[4] = 0.0;
    out[5] = 0.0;
    out[6] = 0.0;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = ((uint32_t)h) << 16;
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* One element: LOAD(k) gives its bits (type BITS); FT is the float type the
 * bits are read as, IT the signed integer type of the same width, MASK
 * clears the sign bit, and values above FINITE_MAX are Inf or NaN. */
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

/* The whole loop: LANES independent accumulators per block of BLOCK
 * elements, block totals added in float64 into out. */
#define KERNEL(LANES)                                                          \
    for (Py_ssize_t b = 0; b < n; b += BLOCK) {                                \
        Py_ssize_t e = n - b < BLOCK ? n : b + BLOCK;                          \
        FT s[LANES], ss[LANES], mn[LANES], mx[LANES];                          \
        IT z[LANES], nf[LANES];                                                \
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
        double bs = 0.0, bss = 0.0;                                            \
        for (int j = 0; j < LANES; j++) {                                      \
            bs += s[j];                                                        \
            bss += ss[j];                                                      \
            if (mn[j] < out[2]) out[2] = mn[j];                                \
            if (mx[j] > out[3]) out[3] = mx[j];                                \
            out[4] += z[j];                                                    \
            out[5] += nf[j];                                                   \
        }                                                                      \
        out[0] += bs;                                                          \
        out[1] += bss;                                                         \
    }

#define FT float
#define IT int32_t
#define BITS uint32_t
#define MASK 0x7fffffffu
#define FINITE_MAX 0x7f7fffff

PTP_CLONES
static void moments_f32(const uint32_t *x, Py_ssize_t n, float shift, double *out) {
#define LOAD(k) (x[(k)])
    KERNEL(16)
#undef LOAD
}

PTP_CLONES
static void moments_bf16(const uint16_t *x, Py_ssize_t n, float shift, double *out) {
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
static void moments_f64(const uint64_t *x, Py_ssize_t n, double shift, double *out) {
#define LOAD(k) (x[(k)])
    KERNEL(8)
#undef LOAD
}

/* moments(out, addrs, sizes, kinds, shifts, k): for each of k segments,
 * fills 7 doubles of out (the six moments and the shift used). All
 * arguments but k are addresses of contiguous arrays (float64 out[k*7],
 * int64 addrs/sizes/kinds, float64 shifts) that the caller keeps alive. A
 * NaN shift means "the segment's first element". Runs without the GIL. */
static PyObject *py_moments(PyObject *self, PyObject *args) {
    unsigned long long out_a, addrs_a, sizes_a, kinds_a, shifts_a;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "KKKKKn", &out_a, &addrs_a, &sizes_a, &kinds_a, &shifts_a, &k))
        return NULL;
    double *out = (double *)(uintptr_t)out_a;
    const int64_t *addrs = (const int64_t *)(uintptr_t)addrs_a;
    const int64_t *sizes = (const int64_t *)(uintptr_t)sizes_a;
    const int64_t *kinds = (const int64_t *)(uintptr_t)kinds_a;
    const double *shifts = (const double *)(uintptr_t)shifts_a;
    for (Py_ssize_t s = 0; s < k; s++) {
        if (kinds[s] < KIND_F32 || kinds[s] > KIND_BF16 || sizes[s] < 0) {
            PyErr_Format(PyExc_ValueError, "bad segment %zd", s);
            return NULL;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t s = 0; s < k; s++) {
        double *o = out + 7 * s;
        const void *p = (const void *)(uintptr_t)addrs[s];
        Py_ssize_t n = (Py_ssize_t)sizes[s];
        double shift = shifts[s];
        init_out(o);
        if (shift != shift) {
            if (n == 0)
                shift = 0.0;
            else if (kinds[s] == KIND_F32)
                shift = ((const float *)p)[0];
            else if (kinds[s] == KIND_F64)
                shift = ((const double *)p)[0];
            else
                shift = bf16_to_f32(((const uint16_t *)p)[0]);
        }
        o[6] = shift;
        switch (kinds[s]) {
        case KIND_F32:
            moments_f32((const uint32_t *)p, n, (float)shift, o);
            break;
        case KIND_F64:
            moments_f64((const uint64_t *)p, n, shift, o);
            break;
        default:
            moments_bf16((const uint16_t *)p, n, (float)shift, o);
        }
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"moments", py_moments, METH_VARARGS,
     "moments(out, addrs, sizes, kinds, shifts, k): one-pass moments of k buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
