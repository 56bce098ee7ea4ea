/* Optional C accelerator for tether's hot path: XOR masking (RFC 6455 5.3).
 *
 * tether.protocol.frames has the pure-Python twin of every function here and uses it
 * when this module is not built; the tests run both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* dst[i] = src[i] ^ mask[(phase + i) % 4] for i < n. The buffers do not overlap. Four
 * 8-byte words per step: compilers turn this into vector instructions. */
static void
xor_mask(unsigned char *restrict dst, const unsigned char *restrict src, Py_ssize_t n,
         const unsigned char *mask, Py_ssize_t phase)
{
    unsigned char rot[8];
    uint64_t m8;
    Py_ssize_t i = 0;
    int k;

    for (k = 0; k < 8; k++) {
        rot[k] = mask[(phase + k) & 3];
    }
    memcpy(&m8, rot, 8);
    for (; i + 32 <= n; i += 32) {
        uint64_t a, b, c, d;
        memcpy(&a, src + i, 8);
        memcpy(&b, src + i + 8, 8);
        memcpy(&c, src + i + 16, 8);
        memcpy(&d, src + i + 24, 8);
        a ^= m8;
        b ^= m8;
        c ^= m8;
        d ^= m8;
        memcpy(dst + i, &a, 8);
        memcpy(dst + i + 8, &b, 8);
        memcpy(dst + i + 16, &c, 8);
        memcpy(dst + i + 24, &d, 8);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t a;
        memcpy(&a, src + i, 8);
        a ^= m8;
        memcpy(dst + i, &a, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ rot[i & 7];
    }
}

static PyObject *
apply_mask(PyObject *self, PyObject *args)
{
    /* apply_mask(data, mask, prefix=b"") -> prefix + data XOR mask, built in one
     * allocation (prefix: a frame header, so that a masked frame is one copy). */
    Py_buffer data, mask, prefix = {NULL, NULL};
    PyObject *result;
    const unsigned char *src, *m;
    unsigned char *dst;
    Py_ssize_t n;

    if (!PyArg_ParseTuple(args, "y*y*|y*:apply_mask", &data, &mask, &prefix)) {
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes long");
        PyBuffer_Release(&data);
        PyBuffer_Release(&mask);
        if (prefix.obj != NULL) {
            PyBuffer_Release(&prefix);
        }
        return NULL;
    }
    n = data.len;
    result = PyBytes_FromStringAndSize(NULL, n + (prefix.obj != NULL ? prefix.len : 0));
    if (result == NULL) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&mask);
        if (prefix.obj != NULL) {
            PyBuffer_Release(&prefix);
        }
        return NULL;
    }
    src = (const unsigned char *)data.buf;
    dst = (unsigned char *)PyBytes_AS_STRING(result);
    if (prefix.obj != NULL) {
        memcpy(dst, prefix.buf, prefix.len);
        dst += prefix.len;
        PyBuffer_Release(&prefix);
    }
    m = (const unsigned char *)mask.buf;
    Py_BEGIN_ALLOW_THREADS
    xor_mask(dst, src, n, m, 0);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&mask);
    return result;
}

static PyObject *
unmask_join(PyObject *self, PyObject *args)
{
    /* unmask_join(parts, mask) -> bytes: the concatenation of the buffers in the
     * sequence ``parts``, XORed with ``mask`` as one payload (the mask's phase runs on
     * across parts). One allocation and one pass over the data. */
    PyObject *parts, *seq, *result = NULL;
    Py_buffer mask, *views = NULL;
    Py_ssize_t count, i, total = 0, got = 0, pos = 0;
    unsigned char *dst;
    const unsigned char *m;

    if (!PyArg_ParseTuple(args, "Oy*:unmask_join", &parts, &mask)) {
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes long");
        PyBuffer_Release(&mask);
        return NULL;
    }
    seq = PySequence_Fast(parts, "parts must be a sequence of bytes-like objects");
    if (seq == NULL) {
        PyBuffer_Release(&mask);
        return NULL;
    }
    count = PySequence_Fast_GET_SIZE(seq);
    views = PyMem_New(Py_buffer, count > 0 ? count : 1);
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < count; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, got), &views[got],
                               PyBUF_SIMPLE) < 0) {
            goto done;
        }
        total += views[got].len;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        goto done;
    }
    dst = (unsigned char *)PyBytes_AS_STRING(result);
    m = (const unsigned char *)mask.buf;
    Py_BEGIN_ALLOW_THREADS
    for (i = 0; i < count; i++) {
        xor_mask(dst + pos, (const unsigned char *)views[i].buf, views[i].len, m, pos);
        pos += views[i].len;
    }
    Py_END_ALLOW_THREADS
done:
    for (i = 0; i < got; i++) {
        PyBuffer_Release(&views[i]);
    }
    PyMem_Free(views);
    Py_DECREF(seq);
    PyBuffer_Release(&mask);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"unmask_join", unmask_join, METH_VARARGS,
     "unmask_join(parts, mask) -> bytes: join the buffers, XOR with the mask as one payload."},
    {"apply_mask", apply_mask, METH_VARARGS,
     "apply_mask(data, mask, prefix=b'') -> bytes: prefix + data XOR the 4-byte mask repeated."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "tether._speedups",
    "C accelerator for tether (optional; pure-Python twins in tether.protocol.frames).",
    -1, speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&speedups_module);
}
