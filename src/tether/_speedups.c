/* Optional C accelerator for tether's hot path: XOR masking (RFC 6455 5.3) and the
 * parsing of whole unfragmented data frames.
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

static PyObject *
parse_simple(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* parse_simple(data, pos, masked, max_size, append[, end]) -> int
     *
     * The hot path of Protocol.receive_data: from ``pos`` in ``data`` (bytes, or any
     * contiguous buffer: the asyncio driver's reused read buffer) up to ``end``
     * (default: all of it), take every complete frame that is a whole message on its
     * own (FIN set, no RSV bit, text or binary), masked if and only if ``masked``, of at
     * most ``max_size`` bytes (-1: no limit), and holding valid UTF-8 if it is text;
     * call ``append`` with each message (new bytes or str: nothing refers to ``data``).
     * Return the position of the first byte not taken: the Python code decides about
     * everything else (partial, fragmented, compressed and control frames, and every
     * error), so it stays the one authority on the protocol.
     */
    PyObject *data, *append, *msg, *res;
    Py_ssize_t pos, end, max_size, start;
    uint64_t length;
    int masked;
    const unsigned char *buf;
    Py_buffer view;
    int have_view = 0;

    if (nargs != 5 && nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "parse_simple takes 5 or 6 arguments");
        return NULL;
    }
    data = args[0];
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    masked = PyObject_IsTrue(args[2]);
    if (masked < 0) {
        return NULL;
    }
    max_size = PyLong_AsSsize_t(args[3]);
    if (max_size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    append = args[4];
    if (PyBytes_Check(data)) {
        buf = (const unsigned char *)PyBytes_AS_STRING(data);
        end = PyBytes_GET_SIZE(data);
    }
    else {
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        have_view = 1;
        buf = (const unsigned char *)view.buf;
        end = view.len;
    }
    if (nargs == 6) {
        Py_ssize_t limit = PyLong_AsSsize_t(args[5]);
        if (limit == -1 && PyErr_Occurred()) {
            goto fail;
        }
        if (limit < 0 || limit > end) {
            PyErr_SetString(PyExc_ValueError, "end out of range");
            goto fail;
        }
        end = limit;
    }
    if (pos < 0 || pos > end) {
        PyErr_SetString(PyExc_ValueError, "pos out of range");
        goto fail;
    }
    while (end - pos >= 2) {
        unsigned char b0 = buf[pos], b1 = buf[pos + 1];
        Py_ssize_t hlen = 2;

        if ((b0 != 0x81 && b0 != 0x82) || ((b1 & 0x80) != 0) != (masked != 0)) {
            break;
        }
        length = b1 & 0x7f;
        if (length == 126) {
            if (end - pos < 4) {
                break;
            }
            length = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
            hlen = 4;
        }
        else if (length == 127) {
            int k;
            if (end - pos < 10) {
                break;
            }
            length = 0;
            for (k = 2; k < 10; k++) {
                length = (length << 8) | buf[pos + k];
            }
            if (length > (uint64_t)PY_SSIZE_T_MAX) {
                break;
            }
            hlen = 10;
        }
        if (masked) {
            hlen += 4;
        }
        if (max_size >= 0 && length > (uint64_t)max_size) {
            break;
        }
        start = pos + hlen;
        if (start > end || (uint64_t)(end - start) < length) {
            break;
        }
        if (b0 == 0x82) {
            msg = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
            if (msg == NULL) {
                goto fail;
            }
            if (masked) {
                xor_mask((unsigned char *)PyBytes_AS_STRING(msg), buf + start,
                         (Py_ssize_t)length, buf + start - 4, 0);
            }
            else {
                memcpy(PyBytes_AS_STRING(msg), buf + start, (size_t)length);
            }
        }
        else if (!masked) {
            msg = PyUnicode_DecodeUTF8((const char *)buf + start, (Py_ssize_t)length, NULL);
        }
        else {
            unsigned char small[512];
            unsigned char *tmp = small;
            if (length > sizeof(small)) {
                tmp = PyMem_Malloc((size_t)length);
                if (tmp == NULL) {
                    PyErr_NoMemory();
                    goto fail;
                }
            }
            xor_mask(tmp, buf + start, (Py_ssize_t)length, buf + start - 4, 0);
            msg = PyUnicode_DecodeUTF8((const char *)tmp, (Py_ssize_t)length, NULL);
            if (tmp != small) {
                PyMem_Free(tmp);
            }
        }
        if (msg == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();  /* invalid UTF-8: the Python code fails the connection */
                break;
            }
            goto fail;
        }
        res = PyObject_CallOneArg(append, msg);
        Py_DECREF(msg);
        if (res == NULL) {
            goto fail;
        }
        Py_DECREF(res);
        pos = start + (Py_ssize_t)length;
    }
    if (have_view) {
        PyBuffer_Release(&view);
    }
    return PyLong_FromSsize_t(pos);

fail:
    if (have_view) {
        PyBuffer_Release(&view);
    }
    return NULL;
}


/* ------------------------------------------------------------------ HTTP heads */

/* RFC 9110 5.6.2: tchar. */
static unsigned char is_tchar[256];

static void
init_tchar(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    int c;
    for (c = '0'; c <= '9'; c++) is_tchar[c] = 1;
    for (c = 'a'; c <= 'z'; c++) is_tchar[c] = 1;
    for (c = 'A'; c <= 'Z'; c++) is_tchar[c] = 1;
    for (; *extra; extra++) is_tchar[(unsigned char)*extra] = 1;
}

/* An ASCII str from n bytes known to be ASCII. */
static PyObject *
ascii_str(const unsigned char *s, Py_ssize_t n)
{
    PyObject *u = PyUnicode_New(n, 127);
    if (u != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(u), s, (size_t)n);
    }
    return u;
}

static int
name_is(const unsigned char *s, Py_ssize_t n, const char *lower)
{
    Py_ssize_t i;
    if ((Py_ssize_t)strlen(lower) != n) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c = (unsigned char)(c + 32);
        }
        if (c != (unsigned char)lower[i]) {
            return 0;
        }
    }
    return 1;
}

static PyObject *
parse_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    /* parse_head(head, response) -> (a, b, version, [(name, value), ...]) or None.
     *
     * head is a whole HTTP/1.x head ending with CRLF CRLF. None unless it is plain:
     * a request line "token SP target SP HTTP/1.x" (a: method, b: target) or a status
     * line "HTTP/1.1 101[ SP reason]" (a: 101, b: reason); header lines "token:" then
     * printable ASCII or tabs, without folding; for a request no body header and, in
     * HTTP/1.1, exactly one Host. Values are stripped of spaces and tabs. The Python
     * twin is tether.protocol.handshake.parse_head_py. */
    PyObject *obj, *a = NULL, *b = NULL, *version = NULL, *items = NULL;
    const unsigned char *p, *q, *stop;
    Py_ssize_t n;
    int response, hosts = 0, http11;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_head(head, response) takes 2 arguments");
        return NULL;
    }
    obj = args[0];
    if (!PyBytes_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "head must be bytes");
        return NULL;
    }
    response = PyObject_IsTrue(args[1]);
    if (response < 0) {
        return NULL;
    }
    p = (const unsigned char *)PyBytes_AS_STRING(obj);
    n = PyBytes_GET_SIZE(obj);
    if (n < 4 || memcmp(p + n - 4, "\r\n\r\n", 4) != 0) {
        Py_RETURN_NONE;
    }
    /* Every scan below stops at a CR at the latest: the head ends with CRLF CRLF. */
    stop = p + n - 2;
    if (response) {
        if (n < 16 || memcmp(p, "HTTP/1.1 101", 12) != 0) {
            Py_RETURN_NONE;
        }
        q = p + 12;
        if (*q == ' ') {
            q++;
            p = q;
            while ((*q >= 0x20 && *q <= 0x7e) || *q == '\t') {
                q++;
            }
        }
        else {
            p = q;
        }
        if (q[0] != '\r' || q[1] != '\n') {
            Py_RETURN_NONE;
        }
        a = PyLong_FromLong(101);
        if (a == NULL) goto error;
        b = ascii_str(p, q - p);
        if (b == NULL) goto error;
        http11 = 1;
        p = q + 2;
    }
    else {
        q = p;
        while (is_tchar[*q]) {
            q++;
        }
        if (q == p || *q != ' ') {
            Py_RETURN_NONE;
        }
        a = ascii_str(p, q - p);
        if (a == NULL) goto error;
        p = ++q;
        while (*q >= 0x21 && *q <= 0x7e) {
            q++;
        }
        if (q == p || *q != ' ' || stop - q < 11 || memcmp(q + 1, "HTTP/1.", 7) != 0
                || (q[8] != '0' && q[8] != '1') || q[9] != '\r' || q[10] != '\n') {
            Py_DECREF(a);
            Py_RETURN_NONE;
        }
        b = ascii_str(p, q - p);
        if (b == NULL) goto error;
        http11 = q[8] == '1';
        p = q + 11;
    }
    version = PyUnicode_FromString(http11 ? "1.1" : "1.0");
    if (version == NULL) goto error;
    items = PyList_New(0);
    if (items == NULL) goto error;
    while (p < stop) {
        const unsigned char *name = p, *value, *end;
        Py_ssize_t name_len;
        PyObject *pair;
        int rc;

        while (is_tchar[*p]) {
            p++;
        }
        name_len = p - name;
        if (name_len == 0 || *p != ':') {
            goto plain_not;
        }
        p++;
        while (*p == ' ' || *p == '\t') {
            p++;
        }
        value = p;
        while ((*p >= 0x20 && *p <= 0x7e) || *p == '\t') {
            p++;
        }
        if (p[0] != '\r' || p[1] != '\n') {
            goto plain_not;
        }
        end = p;
        while (end > value && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }
        p += 2;
        if (!response) {
            if (name_is(name, name_len, "host")) {
                hosts++;
            }
            else if (name_is(name, name_len, "content-length")
                     || name_is(name, name_len, "transfer-encoding")) {
                goto plain_not;  /* h11 checks bodies */
            }
        }
        pair = PyTuple_New(2);
        if (pair == NULL) goto error;
        PyTuple_SET_ITEM(pair, 0, ascii_str(name, name_len));
        PyTuple_SET_ITEM(pair, 1, ascii_str(value, end - value));
        if (PyTuple_GET_ITEM(pair, 0) == NULL || PyTuple_GET_ITEM(pair, 1) == NULL) {
            Py_DECREF(pair);
            goto error;
        }
        rc = PyList_Append(items, pair);
        Py_DECREF(pair);
        if (rc < 0) goto error;
    }
    if (!response && http11 && hosts != 1) {
        goto plain_not;
    }
    obj = PyTuple_Pack(4, a, b, version, items);
    Py_DECREF(a);
    Py_DECREF(b);
    Py_DECREF(version);
    Py_DECREF(items);
    return obj;

plain_not:
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(version);
    Py_XDECREF(items);
    Py_RETURN_NONE;

error:
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(version);
    Py_XDECREF(items);
    return NULL;
}

static PyMethodDef speedups_methods[] = {
    {"parse_head", (PyCFunction)(void (*)(void))parse_head, METH_FASTCALL,
     "parse_head(head, response) -> (a, b, version, items) or None: a plain HTTP/1.x "
     "request head, or a 101 response head, split into parts."},
    {"parse_simple", (PyCFunction)(void (*)(void))parse_simple, METH_FASTCALL,
     "parse_simple(data, pos, masked, max_size, append[, end]) -> int: take whole "
     "unfragmented text/binary frames from data[pos:end] (bytes or a buffer), call append "
     "with each message, return where the first frame left to the Python code starts."},
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
    init_tchar();
    return PyModule_Create(&speedups_module);
}
