/* The steady state of the traffic client and of the built-in server in C: the same work as the
 * quick paths of traffic_client.py and traffic_server.py, without the interpreter.
 *
 * Why: at 10,000 echo connections in a closed loop the kernel's TCP work is ~18 us per round trip
 * on our 2-core VM, and Python's per-message work was another ~3 us (client ~2, server ~1): C on
 * both ends did ~108,000 round trips/s, loopfan ~84,000. With this module (and edge-triggered
 * epoll) loopfan does 92,000-101,000 where C does 95,000-111,000 (docs/benchmarks.md, "echo - the
 * quick paths in C, and edge-triggered sockets").
 * Optional: setup.py builds it when a C compiler is present; without it (or with LOOPFAN_NO_C=1)
 * the Python loops do the same work - the same figures, more CPU. Linux and macOS alike: it only
 * reads and writes the sockets the event loop says are ready. After editing this file, build it
 * again: `python3 -m pip install -e .` (an editable install does not rebuild it by itself).
 *
 * quick_replies(ready, conns, learned, end, warm_end, hist, pushed, trouble)
 *   ready    list of (fd, events) from epoll.poll()
 *   conns    dict fd -> Conn (traffic_client.Conn)
 *   learned  the reply bytes the quick path knows (a whole reply, boundary to boundary)
 *   end, warm_end  perf_counter times: the window's end and the warm-up's end
 *   hist     dict microseconds -> count (whole replies' latency, HDR-rounded to 3 digits)
 *   pushed   dict fd -> (bytes or OSError, perf_counter time): reads done here that the Python
 *            loop must handle (not the learned reply, EOF, an error)
 *   trouble  list of (fd, unsent bytes, errno): a next message the socket did not take whole
 * returns (rest, n, n_window, bytes_out, bytes_out_window): the events left for the Python loop,
 * in their order (every event not completed here), and the quick counts to add to its locals.
 *
 * An event is completed here only in the quick path's exact case: a connection with one message
 * in flight, no reply begun, nothing unsent, its codec fast and at a boundary, and a read that is
 * byte for byte `learned` before `end`. Anything else is left to Python, untouched (not read) when
 * the connection is not in that state, or with its read in `pushed`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#if defined(__APPLE__)
#include <stdlib.h> /* arc4random_buf */
#else
#include <sys/random.h> /* getrandom */
#endif

#define READ_SIZE 65536
/* EPOLLRDHUP | EPOLLHUP | EPOLLERR: the peer's close or an error may be queued behind the data, and
 * (edge-triggered) only the Python loop re-arms epoll for it - such events are left to it. */
#define ENDING_BITS (0x2000 | 0x010 | 0x008)

static PyObject *s_starts, *s_first, *s_out, *s_codec, *s_buf, *s_fast, *s_repeat, *s_message, *s_got_reply;
static PyObject *s_head, *s_payload;
static char read_buf[READ_SIZE];

/* time.perf_counter(), from Python's own clock: the times here are compared with the Python loop's
 * (CLOCK_MONOTONIC on Linux, but not the same clock everywhere - macOS). */
static double perf_now(void) {
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_PerfCounterRaw(&t);
    return PyTime_AsSecondsDouble(t);
#else
    return _PyTime_AsSecondsDouble(_PyTime_GetPerfCounter());
#endif
}

/* 1 if obj.name is true, 0 if false, -1 on error. */
static int attr_true(PyObject *obj, PyObject *name) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* Whether conn is in the quick path's state (see the top): 1 yes, 0 no, -1 error. */
static int quick_state(PyObject *conn, PyObject **codec_out) {
    int r = attr_true(conn, s_out);
    if (r != 0) return r < 0 ? -1 : 0; /* something unsent (and so also EPOLLOUT to serve first) */
    PyObject *starts = PyObject_GetAttr(conn, s_starts);
    if (starts == NULL) return -1;
    Py_ssize_t inflight = PyList_Check(starts) ? PyList_GET_SIZE(starts) : -1;
    Py_DECREF(starts);
    if (inflight != 1) return 0;
    r = attr_true(conn, s_first);
    if (r != 0) return r < 0 ? -1 : 0;
    PyObject *codec = PyObject_GetAttr(conn, s_codec);
    if (codec == NULL) return -1;
    r = attr_true(codec, s_buf);
    if (r == 0) {
        r = attr_true(codec, s_fast);
        if (r >= 0) r = !r; /* fast: quick (0 here means "go on") */
    }
    if (r != 0) {
        Py_DECREF(codec);
        return r < 0 ? -1 : 0;
    }
    *codec_out = codec;
    return 1;
}

static int dict_add(PyObject *d, long long key, long long by) {
    PyObject *k = PyLong_FromLongLong(key);
    if (k == NULL) return -1;
    PyObject *old = PyDict_GetItemWithError(d, k);
    long long now = by;
    if (old != NULL) {
        now += PyLong_AsLongLong(old);
    } else if (PyErr_Occurred()) {
        Py_DECREF(k);
        return -1;
    }
    PyObject *v = PyLong_FromLongLong(now);
    int r = v == NULL ? -1 : PyDict_SetItem(d, k, v);
    Py_XDECREF(v);
    Py_DECREF(k);
    return r;
}

/* HDR rounding to 3 significant digits, as traffic_client.hdr_round. */
static long long hdr_round(long long us) {
    if (us >= 2048) {
        int bits = 64 - __builtin_clzll((unsigned long long)us);
        int shift = bits - 11;
        return us >> shift << shift;
    }
    return us < 1 ? 1 : us;
}

static PyObject *push_read(PyObject *pushed, PyObject *fd_obj, PyObject *data, double t) {
    PyObject *tv = PyFloat_FromDouble(t);
    if (tv == NULL) return NULL;
    PyObject *pair = PyTuple_Pack(2, data, tv);
    Py_DECREF(tv);
    if (pair == NULL) return NULL;
    int r = PyDict_SetItem(pushed, fd_obj, pair);
    Py_DECREF(pair);
    return r < 0 ? NULL : Py_None;
}

/* One (fd, events) pair of epoll.poll()'s list: 1 with *fd_obj (borrowed) and *events set, 0 when
 * it is not such a pair (left to Python), -1 on error. */
static int unpack_event(PyObject *item, PyObject **fd_obj, long *events) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) return 0;
    *fd_obj = PyTuple_GET_ITEM(item, 0);
    *events = PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
    return *events == -1 && PyErr_Occurred() ? -1 : 1;
}

/* Write out[0:len] on fd; what the socket did not take (or the whole of it, when the write failed)
 * goes to `trouble` as (fd, unsent bytes, errno - 0 or EAGAIN: keep it for EPOLLOUT). Returns the
 * bytes written (>= 0), or -1 on a Python error. */
static ssize_t write_or_hand_back(int fd, PyObject *fd_obj, const char *out, Py_ssize_t len, PyObject *trouble) {
    ssize_t k = write(fd, out, (size_t)len);
    int err = k < 0 ? errno : 0;
    if (k < 0) k = 0;
    if (k < len) {
        PyObject *unsent = PyBytes_FromStringAndSize(out + k, len - k);
        PyObject *rec = unsent == NULL ? NULL : Py_BuildValue("(OOi)", fd_obj, unsent, err == EWOULDBLOCK ? EAGAIN : err);
        Py_XDECREF(unsent);
        int r = rec == NULL ? -1 : PyList_Append(trouble, rec);
        Py_XDECREF(rec);
        if (r < 0) return -1;
    }
    return k;
}

/* Append (fd, bytes read) - or (fd, None) when buf is NULL - to the list `pushed`: 0, or -1 on error. */
static int push_pair(PyObject *pushed, PyObject *fd_obj, const char *buf, ssize_t len) {
    PyObject *data = buf == NULL ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize(buf, len);
    PyObject *rec = data == NULL ? NULL : PyTuple_Pack(2, fd_obj, data);
    Py_XDECREF(data);
    int r = rec == NULL ? -1 : PyList_Append(pushed, rec);
    Py_XDECREF(rec);
    return r;
}

/* WebSocket masking keys (RFC 6455 5.3: a fresh unpredictable key per client frame), drawn from the
 * system's CSPRNG 4 KiB at a time as traffic/ws.py's MaskKeys does; a forked worker starts with an
 * empty pool (pthread_atfork), so no two processes send the same keys. */
static unsigned char key_pool[4096];
static size_t key_pos = sizeof key_pool;

static void empty_key_pool(void) { key_pos = sizeof key_pool; }

static int take_key(unsigned char key[4]) {
    if (key_pos + 4 > sizeof key_pool) {
#if defined(__APPLE__)
        arc4random_buf(key_pool, sizeof key_pool);
#else
        if (getrandom(key_pool, sizeof key_pool, 0) != (ssize_t)sizeof key_pool) return -1;
#endif
        key_pos = 0;
    }
    memcpy(key, key_pool + key_pos, 4);
    key_pos += 4;
    return 0;
}

/* The next message of a WsClient on its fast path, as WsClient.message() makes it: codec.head (the
 * frame's first bytes without the key; b"" when the message is not one the fast path sends whole),
 * a fresh key, the payload masked with it. Returns a new reference; Py_None (new reference) when
 * the codec is no such client or cannot use it (then the caller asks codec.message()). */
static PyObject *ws_client_frame(PyObject *codec) {
    PyObject *head = PyObject_GetAttr(codec, s_head);
    if (head == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return NULL;
        PyErr_Clear();
        return Py_NewRef(Py_None);
    }
    PyObject *payload = PyBytes_Check(head) && PyBytes_GET_SIZE(head) > 0 ? PyObject_GetAttr(codec, s_payload) : NULL;
    unsigned char key[4];
    if (payload == NULL || !PyBytes_Check(payload) || take_key(key) < 0) {
        Py_DECREF(head);
        Py_XDECREF(payload);
        PyErr_Clear();
        return Py_NewRef(Py_None);
    }
    Py_ssize_t hl = PyBytes_GET_SIZE(head), pl = PyBytes_GET_SIZE(payload);
    PyObject *frame = PyBytes_FromStringAndSize(NULL, hl + 4 + pl);
    if (frame != NULL) {
        unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(frame);
        const unsigned char *src = (const unsigned char *)PyBytes_AS_STRING(payload);
        memcpy(dst, PyBytes_AS_STRING(head), (size_t)hl);
        memcpy(dst + hl, key, 4);
        for (Py_ssize_t i = 0; i < pl; i++) dst[hl + 4 + i] = src[i] ^ key[i & 3];
    }
    Py_DECREF(head);
    Py_DECREF(payload);
    return frame;
}

static PyObject *quick_replies(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ready, *conns, *learned, *hist, *pushed, *trouble;
    double end, warm_end;
    if (!PyArg_ParseTuple(args, "O!O!SddO!O!O!", &PyList_Type, &ready, &PyDict_Type, &conns, &learned, &end,
                          &warm_end, &PyDict_Type, &hist, &PyDict_Type, &pushed, &PyList_Type, &trouble))
        return NULL;
    const char *want = PyBytes_AS_STRING(learned);
    Py_ssize_t want_len = PyBytes_GET_SIZE(learned);
    long long n = 0, n_window = 0, out_bytes = 0, out_window = 0;
    Py_ssize_t count = PyList_GET_SIZE(ready);
    PyObject *rest = PyList_New(0);
    if (rest == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(ready, i), *fd_obj;
        long events;
        int u = unpack_event(item, &fd_obj, &events);
        if (u < 0) goto fail;
        if (u == 0 || (events & ENDING_BITS)) goto leave;
        PyObject *conn = PyDict_GetItemWithError(conns, fd_obj); /* borrowed */
        if (conn == NULL) {
            if (PyErr_Occurred()) goto fail;
            goto leave;
        }
        PyObject *codec = NULL;
        int q = quick_state(conn, &codec);
        if (q < 0) goto fail;
        if (q == 0) goto leave;
        int fd = (int)PyLong_AsLong(fd_obj);
        ssize_t got = read(fd, read_buf, READ_SIZE);
        double t = perf_now();
        if (got < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK) { /* woken for nothing: as the Python loop's continue */
                Py_DECREF(codec);
                continue;
            }
            PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
            PyObject *ok = exc == NULL ? NULL : push_read(pushed, fd_obj, exc, t);
            Py_XDECREF(exc);
            Py_DECREF(codec);
            if (ok == NULL) goto fail;
            goto leave;
        }
        /* (A full read is never the learned reply: more may be waiting, and Python re-arms epoll.) */
        if (got == READ_SIZE || got != want_len || memcmp(read_buf, want, (size_t)got) != 0 || t >= end) {
            PyObject *data = PyBytes_FromStringAndSize(read_buf, got);
            PyObject *ok = data == NULL ? NULL : push_read(pushed, fd_obj, data, t);
            Py_XDECREF(data);
            Py_DECREF(codec);
            if (ok == NULL) goto fail;
            goto leave;
        }
        /* The learned reply: complete it and send the next message (traffic_client's quick path). */
        PyObject *starts = PyObject_GetAttr(conn, s_starts);
        if (starts == NULL || !PyList_Check(starts) || PyList_GET_SIZE(starts) != 1) {
            Py_XDECREF(starts);
            Py_DECREF(codec);
            PyErr_SetString(PyExc_RuntimeError, "quick_replies: a connection's messages in flight changed");
            goto fail;
        }
        double t0 = PyFloat_AsDouble(PyList_GET_ITEM(starts, 0));
        PyObject *tv = PyFloat_FromDouble(t);
        if (tv == NULL || (t0 == -1.0 && PyErr_Occurred())) {
            Py_XDECREF(tv);
            Py_DECREF(starts);
            Py_DECREF(codec);
            goto fail;
        }
        PyList_SetItem(starts, 0, tv); /* steals tv */
        Py_DECREF(starts);
        if (PyObject_SetAttr(conn, s_got_reply, Py_True) < 0) {
            Py_DECREF(codec);
            goto fail;
        }
        PyObject *out = PyObject_GetAttr(codec, s_repeat);
        if (out != NULL && !(PyBytes_Check(out) && PyBytes_GET_SIZE(out) > 0)) {
            Py_DECREF(out);
            out = ws_client_frame(codec); /* a WebSocket client's frame (a fresh key each), or None */
            if (out == Py_None) {
                Py_DECREF(out);
                out = PyObject_CallMethodNoArgs(codec, s_message);
            }
        }
        Py_DECREF(codec);
        if (out == NULL) goto fail;
        if (!PyBytes_Check(out)) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_TypeError, "quick_replies: a codec's message is not bytes");
            goto fail;
        }
        /* (for the Python loop: the rest to keep for EPOLLOUT, or the failed send) */
        Py_ssize_t out_len = PyBytes_GET_SIZE(out);
        ssize_t k = write_or_hand_back(fd, fd_obj, PyBytes_AS_STRING(out), out_len, trouble);
        Py_DECREF(out);
        if (k < 0) goto fail;
        n += 1;
        out_bytes += k; /* written now (the rest is counted when flushed) */
        if (t0 >= warm_end) {
            if (dict_add(hist, hdr_round((long long)((t - t0) * 1e6)), 1) < 0) goto fail;
            n_window += 1;
            out_window += out_len; /* the whole message, as the Python loop's send_one */
        } else if (t >= warm_end) {
            n_window += 1;
            out_window += out_len;
        }
        continue;
    leave:
        if (PyList_Append(rest, item) < 0) goto fail;
    }
    return Py_BuildValue("(NLLLL)", rest, n, n_window, out_bytes, out_window);
fail:
    Py_DECREF(rest);
    return NULL;
}

/* serve_quick(ready, conns, pending, state, learned, response, echo, framer_type, ws_type, pushed, trouble)
 * The built-in server's echo, HTTP and WebSocket answers over one epoll batch, as
 * TrafficServerWorker.poll:
 *   conns    set of accepted fds; pending: dict fd -> bytes not yet written (such fds are left alone)
 *   state    dict fd -> RequestFramer | WsEchoServer; learned: the request answered inline, or None
 *   echo     true: every read is written back; else a read equal to `learned` on a connection whose
 *            framer (of framer_type) is at a boundary is answered with `response`; or, on a
 *            connection whose WsEchoServer (of ws_type) is on its fast path with nothing buffered,
 *            a read that is whole simple frames only is echoed as WsEchoServer.feed would (below)
 *   pushed   list of (fd, bytes or None): reads for the Python loop (b"" / None: EOF or an error)
 *   trouble  list of (fd, unsent bytes, errno): answers the socket did not take whole
 * returns (rest, bytes_in, bytes_out): the events left for the Python loop and the bytes moved here.
 */
static PyObject *s_conn, *s_closing;
static unsigned char ws_out_buf[READ_SIZE];

/* traffic/ws.py's first bytes: FIN and the opcode */
#define WS_TEXT 0x81
#define WS_BINARY 0x82
#define WS_PING 0x89
#define WS_PONG 0x8A

/* Whether data[0:n] is strictly valid UTF-8, by Python's own decoder (the fast path's check is
 * bytes.decode("utf-8"): the same answer for every input, surrogates and overlongs included).
 * 1 yes, 0 no, -1 on another error (memory). */
static int utf8_valid(const unsigned char *data, Py_ssize_t n) {
    PyObject *text = PyUnicode_DecodeUTF8((const char *)data, n, "strict");
    if (text != NULL) {
        Py_DECREF(text);
        return 1;
    }
    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return -1;
    PyErr_Clear();
    return 0;
}

/* WsEchoServer.feed's fast path for a read that is nothing but whole simple client frames
 * (traffic/ws.py frame_at with (TEXT, BINARY, PING), masked): each unmasked and written back
 * unmasked - a ping as its pong - into out, whose length goes in *out_len. Returns 1 when the whole
 * read was such frames; 0 for anything else - a frame cut by the read's end, any other frame, a
 * text frame that is not UTF-8 - which the Python loop then feeds whole (nothing was sent, and the
 * connection's state is untouched: it parses from the same boundary); -1 on a Python error. The
 * answer is never longer than the read: each frame loses its 4-byte mask key and keeps its
 * length's encoding. */
static int ws_echo_frames(const unsigned char *in, Py_ssize_t n, unsigned char *out, Py_ssize_t cap,
                          Py_ssize_t *out_len) {
    Py_ssize_t pos = 0, o = 0;
    while (pos < n) {
        unsigned char first = in[pos];
        if ((first != WS_TEXT && first != WS_BINARY && first != WS_PING) || n - pos < 2) return 0;
        unsigned char second = in[pos + 1];
        if (!(second & 0x80)) return 0; /* a client's frames are masked */
        Py_ssize_t length = second & 0x7F, head = pos + 2;
        if (length == 126 && first != WS_PING) {
            if (n - pos < 4) return 0;
            length = ((Py_ssize_t)in[pos + 2] << 8) | in[pos + 3];
            if (length < 126) return 0; /* not the shortest encoding: wsproto refuses it */
            head = pos + 4;
        } else if (length >= 126) {
            return 0; /* 64-bit lengths, and control frames of 126 bytes or more */
        }
        Py_ssize_t start = head + 4, end = start + length;
        if (end > n) return 0;
        if (o + 4 + length > cap) return 0; /* (never: the answer is shorter than the read - but checked) */
        const unsigned char *key = in + head;
        out[o++] = first == WS_PING ? WS_PONG : first;
        if (length < 126) {
            out[o++] = (unsigned char)length;
        } else {
            out[o++] = 126;
            out[o++] = (unsigned char)(length >> 8);
            out[o++] = (unsigned char)(length & 0xFF);
        }
        for (Py_ssize_t i = 0; i < length; i++) out[o + i] = in[start + i] ^ key[i & 3];
        if (first == WS_TEXT) {
            int ok = utf8_valid(out + o, length);
            if (ok <= 0) return ok;
        }
        o += length;
        pos = end;
    }
    *out_len = o;
    return 1;
}

static PyObject *serve_quick(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ready, *conns, *pending, *state, *learned, *response, *framer_type, *ws_type, *pushed, *trouble;
    int echo;
    if (!PyArg_ParseTuple(args, "O!O!O!O!OSpOOO!O!", &PyList_Type, &ready, &PySet_Type, &conns, &PyDict_Type,
                          &pending, &PyDict_Type, &state, &learned, &response, &echo, &framer_type, &ws_type,
                          &PyList_Type, &pushed, &PyList_Type, &trouble))
        return NULL;
    int have_learned = PyBytes_Check(learned);
    long long bytes_in = 0, bytes_out = 0;
    Py_ssize_t count = PyList_GET_SIZE(ready);
    PyObject *rest = PyList_New(0);
    if (rest == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(ready, i), *fd_obj;
        long events;
        int r = unpack_event(item, &fd_obj, &events);
        if (r < 0) goto fail;
        if (r == 0) goto leave;
        r = PySet_Contains(conns, fd_obj);
        if (r < 0) goto fail;
        if (!r || !(events & 0x001) || (events & ENDING_BITS)) goto leave; /* EPOLLIN, and no end yet */
        r = PyDict_Contains(pending, fd_obj);
        if (r < 0) goto fail;
        if (r) goto leave;
        int ws = 0;
        if (!echo) {
            PyObject *st = PyDict_GetItemWithError(state, fd_obj); /* borrowed */
            if (st == NULL) {
                if (PyErr_Occurred()) goto fail;
                goto leave;
            }
            if ((PyObject *)Py_TYPE(st) == framer_type) {
                /* HTTP: only a connection between two requests, still on the quick framer */
                if (!have_learned) goto leave;
                r = attr_true(st, s_buf);
                if (r < 0) goto fail;
                if (r) goto leave;
                PyObject *conn = PyObject_GetAttr(st, s_conn);
                if (conn == NULL) goto fail;
                r = conn != Py_None;
                Py_DECREF(conn);
                if (r) goto leave;
            } else if ((PyObject *)Py_TYPE(st) == ws_type) {
                /* WebSocket: only on the fast path, at a frame boundary (nothing buffered), not closing */
                r = attr_true(st, s_fast);
                if (r < 0) goto fail;
                if (!r) goto leave;
                r = attr_true(st, s_buf);
                if (r == 0) r = attr_true(st, s_closing);
                if (r < 0) goto fail;
                if (r) goto leave;
                ws = 1;
            } else {
                goto leave;
            }
        }
        int fd = (int)PyLong_AsLong(fd_obj);
        ssize_t got = read(fd, read_buf, READ_SIZE);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        const char *out;
        Py_ssize_t out_len;
        if (got <= 0 || got == READ_SIZE) {
            /* EOF or an error: the Python loop drops it; a full read: more may be waiting - it
             * answers and re-arms epoll */
            if (push_pair(pushed, fd_obj, got <= 0 ? NULL : read_buf, got) < 0) goto fail;
            continue;
        }
        if (echo) {
            out = read_buf;
            out_len = got;
        } else if (ws) {
            int whole = ws_echo_frames((const unsigned char *)read_buf, got, ws_out_buf, READ_SIZE, &out_len);
            if (whole < 0) goto fail;
            if (!whole) { /* not only whole simple frames: the Python loop feeds it all */
                if (push_pair(pushed, fd_obj, read_buf, got) < 0) goto fail;
                continue;
            }
            out = (const char *)ws_out_buf;
        } else if (got == PyBytes_GET_SIZE(learned) && memcmp(read_buf, PyBytes_AS_STRING(learned), (size_t)got) == 0) {
            out = PyBytes_AS_STRING(response);
            out_len = PyBytes_GET_SIZE(response);
        } else { /* another request: the Python loop counts and answers it */
            if (push_pair(pushed, fd_obj, read_buf, got) < 0) goto fail;
            continue;
        }
        bytes_in += got;
        ssize_t k = write_or_hand_back(fd, fd_obj, out, out_len, trouble);
        if (k < 0) goto fail;
        bytes_out += k;
        continue;
    leave:
        if (PyList_Append(rest, item) < 0) goto fail;
    }
    return Py_BuildValue("(NLL)", rest, bytes_in, bytes_out);
fail:
    Py_DECREF(rest);
    return NULL;
}

static PyMethodDef methods[] = {
    {"quick_replies", quick_replies, METH_VARARGS, "The traffic client's quick path over one epoll batch."},
    {"serve_quick", serve_quick, METH_VARARGS, "The built-in server's echo, HTTP and WebSocket answers over one epoll batch."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "loopfan.engine._quick", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__quick(void) {
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_starts, "starts");
    INTERN(s_first, "first");
    INTERN(s_out, "out");
    INTERN(s_codec, "codec");
    INTERN(s_buf, "buf");
    INTERN(s_fast, "fast");
    INTERN(s_repeat, "repeat");
    INTERN(s_message, "message");
    INTERN(s_got_reply, "got_reply");
    INTERN(s_conn, "conn");
    INTERN(s_closing, "closing");
    INTERN(s_head, "head");
    INTERN(s_payload, "payload");
    if (pthread_atfork(NULL, NULL, empty_key_pool) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return NULL;
    }
    return PyModule_Create(&module);
}
