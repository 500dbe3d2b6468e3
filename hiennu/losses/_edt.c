/* Exact squared Euclidean distance transforms of 3D binary masks, on the CPU, in linear time.
 *
 * The separable algorithm of Felzenszwalb & Huttenlocher ("Distance transforms of sampled
 * functions", Theory of Computing 8, 2012): two scans along x give the 1D distance to the nearest
 * feature voxel of each line; then along y and along z each line is replaced by the lower
 * envelope of the parabolas f(j) + w^2 (i - j)^2, with w the voxel size along that axis.
 *
 * Arrays are C-contiguous (z, y, x) volumes. Masks are one byte per voxel (bool or uint8: zero is
 * background, anything else is object); distance fields are float32, squared, in the units of the
 * spacing. Both functions release the GIL, so Python threads can transform several volumes at
 * once.
 *
 *   squared_edt(mask, out, spacing)
 *       scipy.ndimage.distance_transform_edt semantics, squared: for each object voxel the squared
 *       distance to the nearest background voxel, 0 on background voxels; +inf everywhere when the
 *       mask has no background voxel.
 *   hausdorff_field(mask, out, spacing, accumulate)
 *       for every voxel the squared distance to the nearest voxel of the other class (object
 *       voxels: to the background; background voxels: to the object); all zero for an empty or a
 *       full mask. With accumulate=True the field is added to `out` instead of written.
 *       Returns True when the mask was empty or full.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Lines of the y and z passes gathered together into a compact copy (floats along x). */
#define BLOCK 32
/* Largest reach (in voxels) for which a windowed minimum replaces the parabola envelope. */
#define WINDOW 32

typedef struct {
    Py_ssize_t lo[3], hi[3]; /* half-open index ranges along z, y, x */
} Box;

typedef struct {
    float *rows;        /* a copy of one plane (windowed minimum) or of BLOCK lines (envelope) */
    Py_ssize_t *sites;  /* positions of the parabolas on the lower envelope */
    double *starts;     /* where each parabola's part of the envelope begins */
    double *heights;    /* f(p) + w^2 p^2 for each envelope parabola p */
    float *values;      /* f(p) for each envelope parabola p */
    int32_t *distance;  /* one line of 1D distances in the first pass */
} Scratch;

static Py_ssize_t box_size(const Box *box, int axis) { return box->hi[axis] - box->lo[axis]; }

static void scratch_free(Scratch *s) {
    free(s->rows);
    free(s->sites);
    free(s->starts);
    free(s->heights);
    free(s->values);
    free(s->distance);
}

static int scratch_alloc(Scratch *s, Py_ssize_t longest, Py_ssize_t plane) {
    s->rows = malloc(sizeof(float) * plane);
    s->sites = malloc(sizeof(Py_ssize_t) * (longest + 1));
    s->starts = malloc(sizeof(double) * (longest + 1));
    s->heights = malloc(sizeof(double) * (longest + 1));
    s->values = malloc(sizeof(float) * (longest + 1));
    s->distance = malloc(sizeof(int32_t) * (longest + 1));
    if (!s->rows || !s->sites || !s->starts || !s->heights || !s->values || !s->distance) {
        scratch_free(s);
        return -1;
    }
    return 0;
}

/* In place, f(i) <- min_j f(j) + w2 (i - j)^2 over the finite f(j) (+inf where every f(j) is
 * infinite), for the n values of one line, `step` floats apart. */
static void lower_envelope(float *f, Py_ssize_t n, Py_ssize_t step, double w2, Scratch *s) {
    Py_ssize_t *v = s->sites;
    double *z = s->starts, *h = s->heights;
    float *fv = s->values;
    Py_ssize_t k = -1;
    for (Py_ssize_t q = 0; q < n; q++) {
        float fq = f[q * step];
        if (!(fq <= FLT_MAX)) continue; /* +inf: no feature on this line yet */
        double hq = (double)fq + w2 * (double)q * (double)q;
        /* pop the parabolas that the new one hides: where the two cross, at
         * (hq - h[k]) / (2 w2 (q - v[k])), is not after the start of v[k]'s part */
        while (k > 0 && hq - h[k] <= z[k] * (2.0 * w2 * (double)(q - v[k]))) k--;
        k++;
        z[k] = k == 0 ? -HUGE_VAL : (hq - h[k - 1]) / (2.0 * w2 * (double)(q - v[k - 1]));
        v[k] = q;
        h[k] = hq;
        fv[k] = fq;
    }
    if (k < 0) return; /* all +inf already */
    Py_ssize_t last = k;
    k = 0;
    for (Py_ssize_t q = 0; q < n; q++) {
        while (k < last && z[k + 1] < (double)q) k++;
        double dq = (double)(q - v[k]);
        f[q * step] = (float)(w2 * dq * dq + (double)fv[k]);
    }
}

/* The envelope along the rows of one plane (n rows of nx values, row i at base + i * stride) when
 * every value is finite and at most w2 reach^2: the optimal j then lies within `reach` of i, and a
 * windowed minimum, vectorised along the rows, is exact. */
static void windowed_envelope(float *base, Py_ssize_t n, Py_ssize_t stride, Py_ssize_t nx, double w2,
                              Py_ssize_t reach, Scratch *s) {
    for (Py_ssize_t i = 0; i < n; i++) memcpy(s->rows + i * nx, base + i * stride, sizeof(float) * nx);
    for (Py_ssize_t offset = 1; offset <= reach && offset < n; offset++) {
        float cost = (float)(w2 * (double)offset * (double)offset);
        for (Py_ssize_t i = 0; i + offset < n; i++) {
            const float *ahead = s->rows + (i + offset) * nx, *behind = s->rows + i * nx;
            float *here = base + i * stride, *there = base + (i + offset) * stride;
            for (Py_ssize_t j = 0; j < nx; j++) {
                float a = ahead[j] + cost, b = behind[j] + cost;
                here[j] = a < here[j] ? a : here[j];
                there[j] = b < there[j] ? b : there[j];
            }
        }
    }
}

/* The envelope along one axis for a plane of a C-contiguous volume: nx lines side by side (x
 * contiguous), each of n points `stride` floats apart. */
static void envelope_plane(float *base, Py_ssize_t n, Py_ssize_t stride, Py_ssize_t nx, double w2, Scratch *s) {
    /* the distances are non-negative floats (+inf included), which order as their bit patterns */
    int32_t top = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *row = base + i * stride;
        for (Py_ssize_t j = 0; j < nx; j++) {
            int32_t bits;
            memcpy(&bits, row + j, sizeof bits); /* no aliasing through an int pointer */
            top = bits > top ? bits : top;
        }
    }
    float largest;
    memcpy(&largest, &top, sizeof largest);
    if (largest == 0.0f) return; /* all features: the envelope is zero */
    if (largest <= FLT_MAX && sqrt((double)largest / w2) < (double)WINDOW) {
        windowed_envelope(base, n, stride, nx, w2, (Py_ssize_t)(sqrt((double)largest / w2) + 1e-6), s);
        return;
    }
    /* Lines far apart in memory (the z pass) share cache sets, so work on BLOCK lines at a time in a
     * compact copy. */
    for (Py_ssize_t x0 = 0; x0 < nx; x0 += BLOCK) {
        Py_ssize_t width = nx - x0 < BLOCK ? nx - x0 : BLOCK;
        for (Py_ssize_t i = 0; i < n; i++) memcpy(s->rows + i * BLOCK, base + i * stride + x0, sizeof(float) * width);
        for (Py_ssize_t j = 0; j < width; j++) lower_envelope(s->rows + j, n, BLOCK, w2, s);
        for (Py_ssize_t i = 0; i < n; i++) memcpy(base + i * stride + x0, s->rows + i * BLOCK, sizeof(float) * width);
    }
}

/* Squared distance of every voxel of `box` to the nearest feature voxel inside `box`: features are
 * the voxels whose (mask != 0) equals `feature`. `out` is box-shaped and C-contiguous. */
static int squared_edt_box(const uint8_t *mask, const Py_ssize_t dims[3], const Box *box, int feature,
                           const double w[3], float *out) {
    Py_ssize_t bz = box_size(box, 0), by = box_size(box, 1), bx = box_size(box, 2);
    Py_ssize_t longest = bz > by ? bz : by;
    longest = longest > bx ? longest : bx;
    Scratch s;
    if (scratch_alloc(&s, longest, (bz > by ? bz : by) * (bx > BLOCK ? bx : BLOCK)) < 0) return -1;
    char *slice_has_feature = calloc(bz, 1);
    if (!slice_has_feature) {
        scratch_free(&s);
        return -1;
    }
    const float wx2 = (float)(w[2] * w[2]);
    const int32_t far = (int32_t)(2 * bx + 2); /* a distance no line reaches: no feature on that side */
    const uint8_t background = feature ? 0 : 1;  /* (m != 0) ^ background: 1 on feature voxels */
    int32_t *distance = s.distance;
    for (Py_ssize_t z = 0; z < bz; z++) {
        for (Py_ssize_t y = 0; y < by; y++) {
            const uint8_t *m = mask + ((box->lo[0] + z) * dims[1] + box->lo[1] + y) * dims[2] + box->lo[2];
            float *o = out + (z * by + y) * bx;
            /* branch-free scans: masks straight from an untrained network are noise */
            int32_t previous = -far;
            for (int32_t x = 0; x < (int32_t)bx; x++) {
                int32_t select = -(int32_t)((m[x] != 0) ^ background);
                previous = (x & select) | (previous & ~select);
                distance[x] = x - previous;
            }
            if (previous < 0) { /* no feature on this line: all +inf */
                for (Py_ssize_t x = 0; x < bx; x++) o[x] = INFINITY;
                continue;
            }
            slice_has_feature[z] = 1;
            int32_t next = (int32_t)bx + far;
            for (int32_t x = (int32_t)bx - 1; x >= 0; x--) {
                int32_t select = -(int32_t)((m[x] != 0) ^ background);
                next = (x & select) | (next & ~select);
                int32_t ahead = next - x, behind = distance[x];
                int32_t nearest = ahead < behind ? ahead : behind;
                o[x] = (float)((int64_t)nearest * nearest) * wx2;
            }
        }
    }
    for (Py_ssize_t z = 0; z < bz; z++) {
        if (slice_has_feature[z] && by > 1) envelope_plane(out + z * by * bx, by, bx, bx, w[1] * w[1], &s);
    }
    if (bz > 1) {
        for (Py_ssize_t y = 0; y < by; y++) envelope_plane(out + y * bx, bz, by * bx, bx, w[0] * w[0], &s);
    }
    free(slice_has_feature);
    scratch_free(&s);
    return 0;
}

/* Bounding box of the object voxels (half-open); returns the number of object voxels. */
static Py_ssize_t object_box(const uint8_t *mask, const Py_ssize_t dims[3], Box *box) {
    Py_ssize_t count = 0;
    for (int a = 0; a < 3; a++) {
        box->lo[a] = dims[a];
        box->hi[a] = 0;
    }
    for (Py_ssize_t z = 0; z < dims[0]; z++) {
        for (Py_ssize_t y = 0; y < dims[1]; y++) {
            const uint8_t *m = mask + (z * dims[1] + y) * dims[2];
            Py_ssize_t n = 0;
            for (Py_ssize_t x = 0; x < dims[2]; x++) n += m[x] != 0;
            if (n == 0) continue;
            count += n;
            Py_ssize_t first = 0, last = dims[2] - 1;
            while (!m[first]) first++;
            while (!m[last]) last--;
            if (z < box->lo[0]) box->lo[0] = z;
            box->hi[0] = z + 1;
            if (y < box->lo[1]) box->lo[1] = y;
            if (y + 1 > box->hi[1]) box->hi[1] = y + 1;
            if (first < box->lo[2]) box->lo[2] = first;
            if (last + 1 > box->hi[2]) box->hi[2] = last + 1;
        }
    }
    return count;
}

static void grow_box(Box *box, const Py_ssize_t dims[3]) {
    for (int a = 0; a < 3; a++) {
        box->lo[a] = box->lo[a] > 0 ? box->lo[a] - 1 : 0;
        box->hi[a] = box->hi[a] < dims[a] ? box->hi[a] + 1 : dims[a];
    }
}

/* Write `values` (box-shaped) into the volume `out` at the object voxels of the box. */
static void paste_object(const uint8_t *mask, const Py_ssize_t dims[3], const Box *box, const float *values,
                         float *out) {
    Py_ssize_t by = box_size(box, 1), bx = box_size(box, 2);
    for (Py_ssize_t z = box->lo[0]; z < box->hi[0]; z++) {
        for (Py_ssize_t y = box->lo[1]; y < box->hi[1]; y++) {
            Py_ssize_t offset = (z * dims[1] + y) * dims[2];
            const float *v = values + ((z - box->lo[0]) * by + (y - box->lo[1])) * bx - box->lo[2];
            for (Py_ssize_t x = box->lo[2]; x < box->hi[2]; x++) {
                if (mask[offset + x]) out[offset + x] = v[x];
            }
        }
    }
}

/* scipy semantics, squared, into the zero-filled volume `out`. */
static int squared_edt_volume(const uint8_t *mask, const Py_ssize_t dims[3], const double w[3], float *out) {
    Py_ssize_t total = dims[0] * dims[1] * dims[2];
    memset(out, 0, sizeof(float) * total);
    Box box;
    if (object_box(mask, dims, &box) == 0) return 0;
    grow_box(&box, dims); /* the nearest background voxel of an object voxel lies in this box */
    Py_ssize_t size = box_size(&box, 0) * box_size(&box, 1) * box_size(&box, 2);
    float *values = malloc(sizeof(float) * size);
    if (!values) return -1;
    int status = squared_edt_box(mask, dims, &box, 0, w, values);
    if (status == 0) paste_object(mask, dims, &box, values, out);
    free(values);
    return status;
}

/* Squared distance to the nearest voxel of the other class, written to or added to `out`. Sets
 * *degenerate when the mask is empty or full (the field is then zero). */
static int hausdorff_field_volume(const uint8_t *mask, const Py_ssize_t dims[3], const double w[3], int accumulate,
                                  float *out, int *degenerate) {
    Py_ssize_t total = dims[0] * dims[1] * dims[2];
    Box box;
    Py_ssize_t count = object_box(mask, dims, &box);
    *degenerate = count == 0 || count == total;
    if (*degenerate) {
        if (!accumulate) memset(out, 0, sizeof(float) * total);
        return 0;
    }
    float *field = accumulate ? malloc(sizeof(float) * total) : out;
    if (!field) return -1;
    /* background voxels: distance to the object, over the whole volume (0 on the object) */
    Box whole = {{0, 0, 0}, {dims[0], dims[1], dims[2]}};
    int status = squared_edt_box(mask, dims, &whole, 1, w, field);
    /* object voxels: distance to the background, which lies in the object's box grown by one */
    grow_box(&box, dims);
    Py_ssize_t size = box_size(&box, 0) * box_size(&box, 1) * box_size(&box, 2);
    float *values = status == 0 ? malloc(sizeof(float) * size) : NULL;
    if (!values) status = -1;
    if (status == 0) status = squared_edt_box(mask, dims, &box, 0, w, values);
    if (status == 0) paste_object(mask, dims, &box, values, field);
    free(values);
    if (accumulate) {
        if (status == 0) {
            for (Py_ssize_t i = 0; i < total; i++) out[i] += field[i];
        }
        free(field);
    }
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* Python bindings                                                                             */
/* ------------------------------------------------------------------------------------------ */

static int get_volumes(PyObject *mask_obj, PyObject *out_obj, Py_buffer *mask, Py_buffer *out, Py_ssize_t dims[3]) {
    if (PyObject_GetBuffer(mask_obj, mask, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    if (mask->ndim != 3 || mask->itemsize != 1) {
        PyErr_Format(PyExc_ValueError, "mask must be a C-contiguous 3D array of bool or uint8 (z, y, x), "
                                       "got %d dimensions of %zd-byte items", mask->ndim, mask->itemsize);
        PyBuffer_Release(mask);
        return -1;
    }
    if (PyObject_GetBuffer(out_obj, out, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(mask);
        return -1;
    }
    const char *fmt = out->format ? out->format : "B";
    if (fmt[0] == '<' || fmt[0] == '=' || fmt[0] == '@') fmt++;
    int same_shape = out->ndim == 3;
    for (int a = 0; a < 3 && same_shape; a++) same_shape = out->shape[a] == mask->shape[a];
    if (strcmp(fmt, "f") != 0 || out->itemsize != 4 || !same_shape) {
        PyErr_SetString(PyExc_ValueError, "out must be a writable C-contiguous float32 array of the mask's shape");
        PyBuffer_Release(mask);
        PyBuffer_Release(out);
        return -1;
    }
    for (int a = 0; a < 3; a++) dims[a] = mask->shape[a];
    return 0;
}

static int parse_spacing(PyObject *spacing, double w[3]) {
    if (!PyArg_ParseTuple(spacing, "ddd", &w[0], &w[1], &w[2])) return -1;
    for (int a = 0; a < 3; a++) {
        if (!(w[a] > 0.0) || !isfinite(w[a])) {
            PyErr_SetString(PyExc_ValueError, "spacing must be three positive finite numbers (z, y, x)");
            return -1;
        }
    }
    return 0;
}

static PyObject *py_squared_edt(PyObject *self, PyObject *args) {
    PyObject *mask_obj, *out_obj, *spacing_obj;
    if (!PyArg_ParseTuple(args, "OOO!", &mask_obj, &out_obj, &PyTuple_Type, &spacing_obj)) return NULL;
    double w[3];
    if (parse_spacing(spacing_obj, w) < 0) return NULL;
    Py_buffer mask, out;
    Py_ssize_t dims[3];
    if (get_volumes(mask_obj, out_obj, &mask, &out, dims) < 0) return NULL;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = squared_edt_volume((const uint8_t *)mask.buf, dims, w, (float *)out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&mask);
    PyBuffer_Release(&out);
    if (status < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_hausdorff_field(PyObject *self, PyObject *args) {
    PyObject *mask_obj, *out_obj, *spacing_obj;
    int accumulate = 0;
    if (!PyArg_ParseTuple(args, "OOO!|p", &mask_obj, &out_obj, &PyTuple_Type, &spacing_obj, &accumulate)) return NULL;
    double w[3];
    if (parse_spacing(spacing_obj, w) < 0) return NULL;
    Py_buffer mask, out;
    Py_ssize_t dims[3];
    if (get_volumes(mask_obj, out_obj, &mask, &out, dims) < 0) return NULL;
    int status, degenerate = 0;
    Py_BEGIN_ALLOW_THREADS
    status = hausdorff_field_volume((const uint8_t *)mask.buf, dims, w, accumulate, (float *)out.buf, &degenerate);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&mask);
    PyBuffer_Release(&out);
    if (status < 0) return PyErr_NoMemory();
    return PyBool_FromLong(degenerate);
}

static PyMethodDef methods[] = {
    {"squared_edt", py_squared_edt, METH_VARARGS,
     "squared_edt(mask, out, spacing): squared distance of each object voxel to the nearest background "
     "voxel (0 on the background, +inf without background), into the float32 volume out."},
    {"hausdorff_field", py_hausdorff_field, METH_VARARGS,
     "hausdorff_field(mask, out, spacing, accumulate=False) -> degenerate: squared distance of each voxel "
     "to the nearest voxel of the other class (zero for an empty or full mask), written or added to out."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_edt",
                                    "Exact linear-time squared Euclidean distance transforms (C).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__edt(void) { return PyModule_Create(&module); }
