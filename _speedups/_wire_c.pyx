# cython: language_level=3, boundscheck=False, wraparound=False
"""Per-request byte work of the data plane: the compiled twin of ``harbor_router/_wire_py.py``.

Same functions, same results (the twin is the specification; the tests run both): name, tag
and digest validation as typed character loops instead of regular expressions; header
rewriting and head joining with fewer temporary objects.
"""

from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize,
                            PyBytes_GET_SIZE)
from cpython.object cimport PyObject, PyTypeObject
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.tuple cimport PyTuple_CheckExact, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport (PyUnicode_AsUTF8AndSize, PyUnicode_DATA, PyUnicode_GET_LENGTH,
                              PyUnicode_New)
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import os
import time

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
cdef frozenset _HOP = HOP_BY_HOP
cdef frozenset _REWRITTEN = frozenset({b"location", b"link"})
cdef dict _PLAIN_CONNECTION = {
    b"keep-alive": frozenset({b"keep-alive"}),
    b"close": frozenset({b"close"}),
}


cdef inline bint _alnum_lower(Py_UCS4 c):
    return (c >= u"a" and c <= u"z") or (c >= u"0" and c <= u"9")


cdef inline bint _hex_lower(Py_UCS4 c):
    return (c >= u"a" and c <= u"f") or (c >= u"0" and c <= u"9")


cpdef valid_name(str name):
    """The OCI repository name grammar (the length limit is the caller's)."""
    cdef Py_ssize_t n = len(name), i = 0
    cdef Py_UCS4 c
    if n == 0:
        return False
    while True:
        # one path component: alnum+ (separator alnum+)*
        if i >= n or not _alnum_lower(name[i]):
            return False
        while i < n and _alnum_lower(name[i]):
            i += 1
        while i < n:
            c = name[i]
            if c == u".":
                i += 1
            elif c == u"_":
                i += 1
                if i < n and name[i] == u"_":
                    i += 1
            elif c == u"-":
                while i < n and name[i] == u"-":
                    i += 1
            else:
                break
            if i >= n or not _alnum_lower(name[i]):
                return False
            while i < n and _alnum_lower(name[i]):
                i += 1
        if i == n:
            return True
        if name[i] != u"/":
            return False
        i += 1


cpdef valid_tag(str tag):
    cdef Py_ssize_t n = len(tag), i
    cdef Py_UCS4 c
    if n == 0 or n > 128:
        return False
    for i in range(n):
        c = tag[i]
        if (c >= u"a" and c <= u"z") or (c >= u"A" and c <= u"Z") or (c >= u"0" and c <= u"9"):
            continue
        if c == u"_":
            continue
        if i > 0 and (c == u"." or c == u"-"):
            continue
        return False
    return True


cpdef valid_digest(str digest):
    """``sha256:`` + 64 or ``sha512:`` + 128 lowercase hex digits."""
    cdef Py_ssize_t n = len(digest), i, want
    if n == 71 and digest.startswith(u"sha256:"):
        want = 71
    elif n == 135 and digest.startswith(u"sha512:"):
        want = 135
    else:
        return False
    for i in range(7, want):
        if not _hex_lower(digest[i]):
            return False
    return True


def connection_tokens(bytes value):
    """Header names listed in one ``Connection`` value (hop-by-hop for this message too)."""
    plain = _PLAIN_CONNECTION.get(value.lower())
    if plain is not None:
        return plain
    return frozenset([t.strip().lower() for t in value.split(b",")])


cpdef end_to_end(list headers, bytes needle, bytes replacement):
    """Headers to send on, in order, multi-valued ones intact; and the body's length when
    ``Content-Length`` frames it (present, digits, no ``Transfer-Encoding``), else -1."""
    cdef list out = []
    cdef object extra = None
    cdef bint has_length = False, chunked = False
    cdef bytes length_value = b""
    cdef long long length = 0
    cdef Py_ssize_t i
    cdef unsigned char c
    cdef bytes name, value
    cdef int kind
    for item in headers:
        name, value = item
        kind = _name_kind(name)
        if kind == _E2E_HOP:
            continue
        if kind == _E2E_CONNECTION:
            tokens = connection_tokens(value)
            extra = tokens if extra is None else extra | tokens
            continue
        if kind == _E2E_CHUNKED:
            chunked = True
            continue
        if kind == _E2E_LENGTH:
            if not has_length:
                has_length = True
                length_value = value.strip()
        elif kind == _E2E_REWRITE and needle in value:
            out.append((name, value.replace(needle, replacement)))
            continue
        out.append(item if type(item) is tuple else (name, value))
    if extra and not extra <= _HOP:
        out = [(n, v) for n, v in out if n.lower() not in extra]
    if chunked and has_length:
        out = [(n, v) for n, v in out if n.lower() != b"content-length"]
    if not has_length or chunked:
        return out, -1
    if PyBytes_GET_SIZE(length_value) == 0 or PyBytes_GET_SIZE(length_value) > 18:
        return out, -1
    for i in range(PyBytes_GET_SIZE(length_value)):
        c = length_value[i]
        if c < 48 or c > 57:
            return out, -1
        length = length * 10 + (c - 48)
    return out, length


cpdef build_head(bytes status_line, headers, bytes extra, long content_length, bint close):
    """Status line, headers, ``extra`` (pre-joined lines), framing, blank line; one bytes.
    ``content_length`` < 0 adds no ``Content-Length``."""
    if status_line is None or extra is None:  # checked here: C callers skip the wrapper
        raise TypeError("the status line and the extra lines are bytes")
    cdef Py_ssize_t size = PyBytes_GET_SIZE(status_line) + PyBytes_GET_SIZE(extra) + 2, at
    cdef Py_ssize_t digits = 0, fields_end
    cdef char number[24]
    cdef bytes name, value, head
    cdef char* out
    if type(headers) is not list and type(headers) is not tuple:
        headers = list(headers)
    for name, value in headers:
        if name is None or value is None:
            raise TypeError("header names and values are bytes")
        size += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4
    fields_end = size - PyBytes_GET_SIZE(extra) - 2
    if content_length >= 0:
        digits = _decimal(number, content_length)
        size += 18 + digits
    if close:
        size += 19
    head = PyBytes_FromStringAndSize(NULL, size)
    out = PyBytes_AS_STRING(head)
    memcpy(out, PyBytes_AS_STRING(status_line), PyBytes_GET_SIZE(status_line))
    at = PyBytes_GET_SIZE(status_line)
    for name, value in headers:  # the same lines again (unless an item changed its mind)
        if (name is None or value is None
                or at + PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + 4 > fields_end):
            raise RuntimeError("headers changed while joined")
        memcpy(out + at, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))
        at += PyBytes_GET_SIZE(name)
        out[at] = 58
        out[at + 1] = 32
        at += 2
        memcpy(out + at, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        at += PyBytes_GET_SIZE(value)
        out[at] = 13
        out[at + 1] = 10
        at += 2
    memcpy(out + at, PyBytes_AS_STRING(extra), PyBytes_GET_SIZE(extra))
    at += PyBytes_GET_SIZE(extra)
    if content_length >= 0:
        memcpy(out + at, b"Content-Length: ", 16)
        memcpy(out + at + 16, number, digits)
        at += 16 + digits
        out[at] = 13
        out[at + 1] = 10
        at += 2
    if close:
        memcpy(out + at, b"Connection: close\r\n", 19)
        at += 19
    out[at] = 13
    out[at + 1] = 10
    return head


cpdef whole_response(bytes status_line, bytes block, bytes added, bint close, bytes data,
                     Py_ssize_t body_at):
    """A scanned response for the client, head and body in one bytes (see the twin)."""
    if status_line is None or block is None or added is None or data is None:
        raise TypeError("the status line, the lines and the response are bytes")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), at
    if body_at < 0 or body_at > n:
        raise ValueError("the body starts inside the response")
    cdef Py_ssize_t size = (PyBytes_GET_SIZE(status_line) + PyBytes_GET_SIZE(block)
                            + PyBytes_GET_SIZE(added) + (19 if close else 0) + 2 + n - body_at)
    cdef bytes whole = PyBytes_FromStringAndSize(NULL, size)
    cdef char* out = PyBytes_AS_STRING(whole)
    memcpy(out, PyBytes_AS_STRING(status_line), PyBytes_GET_SIZE(status_line))
    at = PyBytes_GET_SIZE(status_line)
    memcpy(out + at, PyBytes_AS_STRING(block), PyBytes_GET_SIZE(block))
    at = _head_end(out, at + PyBytes_GET_SIZE(block), added, close)
    memcpy(out + at, PyBytes_AS_STRING(data) + body_at, n - body_at)
    return whole


cdef inline Py_ssize_t _head_end(char* out, Py_ssize_t at, bytes added, bint close) noexcept:
    """A head's end written at ``out + at``: the ``added`` lines, ``Connection: close`` when
    ``close``, the blank line; where the body goes."""
    memcpy(out + at, PyBytes_AS_STRING(added), PyBytes_GET_SIZE(added))
    at += PyBytes_GET_SIZE(added)
    if close:
        memcpy(out + at, b"Connection: close\r\n", 19)
        at += 19
    out[at] = 13
    out[at + 1] = 10
    return at + 2


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)


cdef Py_ssize_t _decimal(char* out, Py_ssize_t value) noexcept:
    """The decimal digits of ``value`` (not negative) written at ``out``: how many."""
    cdef char digits[24]
    cdef Py_ssize_t n = 0, i
    while True:
        digits[n] = <char>(48 + value % 10)
        value //= 10
        n += 1
        if value == 0:
            break
    for i in range(n):
        out[i] = digits[n - 1 - i]
    return n


cpdef renamed_tag_response(bytes status_line, bytes block, bytes added, bint close, bytes data,
                           Py_ssize_t body_at, str name):
    """A scanned tag list renamed for the client, head and body in one bytes, or None (see
    the twin)."""
    if (status_line is None or block is None or added is None or data is None
            or name is None):
        raise TypeError("the status line, the lines and the response are bytes, the name str")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    if body_at < 0 or body_at > n:
        raise ValueError("the body starts inside the response")
    if not PyUnicode_IS_ASCII(name):
        return None
    cdef Py_ssize_t name_n = PyUnicode_GET_LENGTH(name), i
    cdef const unsigned char* name_p = <const unsigned char*>PyUnicode_DATA(name)
    cdef unsigned char c
    for i in range(name_n):
        c = name_p[i]
        if c < 32 or c > 126 or c == 34 or c == 92:  # not printable, '"', '\\'
            return None
    cdef const char* p = PyBytes_AS_STRING(data) + body_at
    cdef Py_ssize_t length = n - body_at, end = 9
    if length < 9 or memcmp(p, b'{"name":"', 9) != 0:
        return None
    while True:  # the name's closing quote, and no backslash before it
        if end >= length or p[end] == 92:
            return None
        if p[end] == 34:
            break
        end += 1
    cdef char old[48]
    memcpy(old, b"Content-Length: ", 16)
    cdef Py_ssize_t old_n = 16 + _decimal(old + 16, length)
    cdef const char* b = PyBytes_AS_STRING(block)
    cdef Py_ssize_t block_n = PyBytes_GET_SIZE(block), at = 0, line_end
    while True:  # the first line that is exactly the old length's
        line_end = at
        while line_end + 1 < block_n and not (b[line_end] == 13 and b[line_end + 1] == 10):
            line_end += 1
        if line_end + 1 >= block_n:
            return None
        if line_end - at == old_n and memcmp(b + at, old, old_n) == 0:
            break
        at = line_end + 2
    cdef Py_ssize_t body_n = 9 + name_n + length - end
    cdef char digits[24]
    cdef Py_ssize_t digits_n = _decimal(digits, body_n)
    cdef Py_ssize_t size = (PyBytes_GET_SIZE(status_line) + at + 16 + digits_n + block_n - line_end
                            + PyBytes_GET_SIZE(added) + (19 if close else 0) + 2 + body_n)
    cdef bytes whole = PyBytes_FromStringAndSize(NULL, size)
    cdef char* out = PyBytes_AS_STRING(whole)
    memcpy(out, PyBytes_AS_STRING(status_line), PyBytes_GET_SIZE(status_line))
    cdef Py_ssize_t w = PyBytes_GET_SIZE(status_line)
    memcpy(out + w, b, at)
    w += at
    memcpy(out + w, b"Content-Length: ", 16)
    w += 16
    memcpy(out + w, digits, digits_n)
    w += digits_n
    memcpy(out + w, b + line_end, block_n - line_end)
    w = _head_end(out, w + block_n - line_end, added, close)
    memcpy(out + w, b'{"name":"', 9)
    memcpy(out + w + 9, name_p, name_n)
    memcpy(out + w + 9 + name_n, p + end, length - end)
    return whole


# scan_response: the strict subset of HTTP/1.1 responses it reads itself (see the twin).
# byte classes, one table lookup per byte
cdef enum:
    _TCHAR = 1  # a header name's (RFC 9110 token)
    _FIELD = 2  # a header value's or a reason phrase's: HTAB, SP, VCHAR, obs-text
    _TARGET = 4  # a request target's: visible ASCII but '#'
    _PATH = 8  # a target's before its query: visible ASCII but '#' and '?'
cdef unsigned char _CLASS[256]
for _c in range(256):
    _CLASS[_c] = (
        (_TCHAR if (48 <= _c <= 57 or 65 <= _c <= 90 or 97 <= _c <= 122
                    or chr(_c) in "!#$%&'*+-.^_`|~") else 0)
        | (_FIELD if _c == 9 or (_c >= 32 and _c != 127) else 0)
        | (_TARGET if 32 < _c < 127 and _c != 35 else 0)
        | (_PATH if 32 < _c < 127 and _c != 35 and _c != 63 else 0)
    )

# Theory of operation. The scans read a bytes object, which always has a NUL after its last
# byte, and scan_request reads only up to the CR of its final CRLF CRLF: a run of token, field
# or target bytes therefore always stops at or before the scan's end without a bound check.
# Runs are skipped sixteen bytes at a time with SSE2 (see the skips below); without it, field
# and target bytes are checked eight at a time (a word whose bytes are all SP..0x7e or
# 0x80..0xff is all field bytes; HTAB, CR and the rest fall back to the table). Names are told
# apart by their length and first letter (_KNOWN_BY), then a word at a time (their first 8
# bytes against the known name's, see _KNOWN), and so are the Connection values, OR 0x20
# folding case: on token and field bytes it maps only 'A'-'Z' onto letters and nothing onto
# '-' (CR, which it maps onto '-', is neither).
cdef extern from *:
    """
    #define HR_WIRE_LOW7 0x7F7F7F7F7F7F7F7FULL
    #define HR_WIRE_HIGH 0x8080808080808080ULL
    #define HR_WIRE_ONES 0x0101010101010101ULL
    #define HR_WIRE_ADD5F 0x5F5F5F5F5F5F5F5FULL
    #define HR_WIRE_ADD5E 0x5E5E5E5E5E5E5E5EULL
    #define HR_WIRE_HASHES 0x2323232323232323ULL
    #define HR_WIRE_QUERIES 0x3F3F3F3F3F3F3F3FULL
    #define HR_WIRE_CASE 0x2020202020202020ULL
    /* the index of the first byte (in memory order) whose high bit is set in a nonzero x */
    static inline Py_ssize_t hr_wire_first_byte(uint64_t x) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        return __builtin_clzll(x) >> 3;
    #elif defined(__GNUC__)
        return __builtin_ctzll(x) >> 3;
    #else
        Py_ssize_t i = 0;
        while (!(x & 0x80)) { x >>= 8; i++; }
        return i;
    #endif
    }
    """
    Py_ssize_t _first_byte "hr_wire_first_byte"(uint64_t x) noexcept
    const uint64_t _LOW7 "HR_WIRE_LOW7"
    const uint64_t _HIGH "HR_WIRE_HIGH"
    const uint64_t _ONES "HR_WIRE_ONES"
    const uint64_t _ADD5F "HR_WIRE_ADD5F"
    const uint64_t _ADD5E "HR_WIRE_ADD5E"
    const uint64_t _HASHES "HR_WIRE_HASHES"
    const uint64_t _QUERIES "HR_WIRE_QUERIES"
    const uint64_t _CASE "HR_WIRE_CASE"


# Sixteen bytes at a time where SSE2 is there (always on x86-64): each skip below returns how
# far from ``p[i]`` the bytes are all of its kind (token letters, digits and '-'; field bytes;
# target bytes), reading nothing past ``p[end]`` (a byte of none of these kinds in every call);
# from at least sixteen bytes (end >= 15) they stop exactly there, and a field or target run is
# then done (a name's run reads its other token bytes on by the table); from fewer they skip
# nothing and the table loop reads. Elsewhere they skip nothing (and the field and target runs
# read words as before); HR_WIRE_PORTABLE builds that way on x86-64 too.
cdef extern from *:
    """
    #if defined(__SSE2__) && defined(__GNUC__) && !defined(HR_WIRE_PORTABLE)
    #include <emmintrin.h>
    #define HR_WIRE_SIMD 1
    /* 0xFF in each byte of x from lo to lo + width - 1 (as unsigned bytes, width <= 128) */
    static inline __m128i hr_wire_in(__m128i x, int lo, int width) {
        return _mm_cmplt_epi8(_mm_add_epi8(x, _mm_set1_epi8((char)(0x80 - lo))),
                              _mm_set1_epi8((char)(width - 0x80)));
    }
    /* a bit set for each byte not a letter, a digit or '-' */
    static inline unsigned hr_wire_name_stops(__m128i x) {
        __m128i ok = _mm_or_si128(
            _mm_or_si128(hr_wire_in(_mm_or_si128(x, _mm_set1_epi8(0x20)), 'a', 26),
                         hr_wire_in(x, '0', 10)),
            _mm_cmpeq_epi8(x, _mm_set1_epi8('-')));
        return (unsigned)_mm_movemask_epi8(ok) ^ 0xFFFFu;
    }
    /* a bit set for each byte not HTAB, SP..0x7e or 0x80..0xff */
    static inline unsigned hr_wire_field_stops(__m128i x) {
        __m128i controls = _mm_andnot_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(9)),
                                            hr_wire_in(x, 0, 32));
        return (unsigned)_mm_movemask_epi8(
            _mm_or_si128(controls, _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f))));
    }
    /* a bit set for each byte not 0x21..0x7e, or '#', or also */
    static inline unsigned hr_wire_target_stops(__m128i x, char also) {
        __m128i left_out = _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('#')),
                                        _mm_cmpeq_epi8(x, _mm_set1_epi8(also)));
        return (unsigned)_mm_movemask_epi8(_mm_andnot_si128(left_out, hr_wire_in(x, 0x21, 0x5e)))
               ^ 0xFFFFu;
    }
    /* the run at p[i] (i <= end) in steps of 16 bytes, the last step the 16 that end at p[end]:
       with end >= 15 where the first byte not of its kind is (p[end] is none), else i; the
       steps that fit before p[end] inline, the last one (clamped to it) out of line */
    #define HR_WIRE_SKIP(STOPS, TAIL, ...) do { \
        unsigned stops; \
        for (; i + 15 <= end; i += 16) { \
            stops = STOPS(_mm_loadu_si128((const __m128i*)(p + i)), ##__VA_ARGS__); \
            if (stops) return i + __builtin_ctzll(stops); \
        } \
        return TAIL(p, i, end, ##__VA_ARGS__); \
    } while (0)
    #define HR_WIRE_SKIP_TAIL(STOPS, ...) do { \
        unsigned stops; \
        if (end < 15) return i; \
        stops = STOPS(_mm_loadu_si128((const __m128i*)(p + end - 15)), ##__VA_ARGS__) \
                >> (i - (end - 15)); \
        return stops ? i + __builtin_ctzll(stops) : i; \
    } while (0)
    static __attribute__((noinline)) Py_ssize_t hr_wire_name_tail(
            const unsigned char* p, Py_ssize_t i, Py_ssize_t end) {
        HR_WIRE_SKIP_TAIL(hr_wire_name_stops);
    }
    static __attribute__((noinline)) Py_ssize_t hr_wire_field_tail(
            const unsigned char* p, Py_ssize_t i, Py_ssize_t end) {
        HR_WIRE_SKIP_TAIL(hr_wire_field_stops);
    }
    static __attribute__((noinline)) Py_ssize_t hr_wire_target_tail(
            const unsigned char* p, Py_ssize_t i, Py_ssize_t end, char also) {
        HR_WIRE_SKIP_TAIL(hr_wire_target_stops, also);
    }
    static inline Py_ssize_t hr_wire_skip_name(const unsigned char* p, Py_ssize_t i,
                                               Py_ssize_t end) {
        HR_WIRE_SKIP(hr_wire_name_stops, hr_wire_name_tail);
    }
    static inline Py_ssize_t hr_wire_skip_field(const unsigned char* p, Py_ssize_t i,
                                                Py_ssize_t end) {
        HR_WIRE_SKIP(hr_wire_field_stops, hr_wire_field_tail);
    }
    static inline Py_ssize_t hr_wire_skip_target(const unsigned char* p, Py_ssize_t i,
                                                 Py_ssize_t end, char also) {
        HR_WIRE_SKIP(hr_wire_target_stops, hr_wire_target_tail, also);
    }
    #else
    #define HR_WIRE_SIMD 0
    #define hr_wire_skip_name(p, i, end) (i)
    #define hr_wire_skip_field(p, i, end) (i)
    #define hr_wire_skip_target(p, i, end, also) (i)
    #endif
    """
    const bint _SIMD "HR_WIRE_SIMD"
    Py_ssize_t _skip_name "hr_wire_skip_name"(const unsigned char* p, Py_ssize_t i,
                                              Py_ssize_t end) noexcept
    Py_ssize_t _skip_field "hr_wire_skip_field"(const unsigned char* p, Py_ssize_t i,
                                                Py_ssize_t end) noexcept
    Py_ssize_t _skip_target "hr_wire_skip_target"(const unsigned char* p, Py_ssize_t i,
                                                  Py_ssize_t end, char also) noexcept


cdef inline uint64_t _ld8(const void* p) noexcept:
    cdef uint64_t x
    memcpy(&x, p, 8)
    return x


cdef inline uint32_t _ld4(const void* p) noexcept:
    cdef uint32_t x
    memcpy(&x, p, 4)
    return x


cdef inline uint16_t _ld2(const void* p) noexcept:
    cdef uint16_t x
    memcpy(&x, p, 2)
    return x


cdef inline uint64_t _unplain(uint64_t x) noexcept:
    """The high bit of each byte of ``x`` that is not SP..0x7e or 0x80..0xff (not a field
    byte, or HTAB) set, the rest clear."""
    # without its high bit, + 1 (mod 0x80) takes 0x7f and the bytes below 0x20 below 0x21,
    # and + 0x5f leaves the high bit clear on just those
    return ~(((((x & _LOW7) + _ONES) & _LOW7) + _ADD5F) | x) & _HIGH


cdef inline Py_ssize_t _field_run(const unsigned char* p, Py_ssize_t i, Py_ssize_t end) noexcept:
    """Where the run of field bytes at ``p[i]`` stops (at a byte no value holds)."""
    cdef uint64_t flagged
    if _SIMD and end >= 15:
        return _skip_field(p, i, end)
    while not _SIMD and i + 8 <= end:
        flagged = _unplain(_ld8(p + i))
        if flagged == 0:
            i += 8
            continue
        i += _first_byte(flagged)
        if p[i] != 9:
            return i
        i += 1
    while _CLASS[p[i]] & _FIELD:
        i += 1
    return i


cdef inline uint64_t _untarget(uint64_t x, uint64_t also) noexcept:
    """The high bit of each byte of ``x`` that is not visible ASCII, or is '#' or the byte
    ``also`` repeats, set, the rest clear."""
    cdef uint64_t low = x & _LOW7
    cdef uint64_t hashes = low ^ _HASHES, others = low ^ also
    # + 1 (mod 0x80), + 0x5e: the high bit set from 0x21 to 0x7e; + 0x7f: set but on zero
    return ((~(((low + _ONES) & _LOW7) + _ADD5E) | x) | ~((hashes + _LOW7) | hashes)
            | ~((others + _LOW7) | others)) & _HIGH


cdef inline Py_ssize_t _target_run(const unsigned char* p, Py_ssize_t i, Py_ssize_t end,
                                   uint64_t also, unsigned char cls) noexcept:
    """Where the run of target bytes (of class ``cls``: ``also`` is the byte it leaves out
    besides '#', repeated) at ``p[i]`` stops."""
    cdef uint64_t flagged
    if _SIMD and end >= 15:
        return _skip_target(p, i, end, <char>(also & 0xFF))
    while not _SIMD and i + 8 <= end:
        flagged = _untarget(_ld8(p + i), also)
        if flagged:
            return i + _first_byte(flagged)
        i += 8
    while _CLASS[p[i]] & cls:
        i += 1
    return i


cdef inline bint _ieq(const unsigned char* p, Py_ssize_t n, const char* lower) noexcept:
    """``p[:n]`` (token or field bytes, 2 <= n <= 24) equals ``lower`` (n lowercase letters
    and '-') ignoring case."""
    if n >= 8:
        if (_ld8(p) | _CASE) != _ld8(lower):
            return False
        if n > 16 and (_ld8(p + 8) | _CASE) != _ld8(lower + 8):
            return False
        return (_ld8(p + n - 8) | _CASE) == _ld8(lower + n - 8)
    if n >= 4:
        return ((_ld4(p) | <uint32_t>_CASE) == _ld4(lower)
                and (_ld4(p + n - 4) | <uint32_t>_CASE) == _ld4(lower + n - 4))
    return ((_ld2(p) | <uint16_t>_CASE) == _ld2(lower)
            and (_ld2(p + n - 2) | <uint16_t>_CASE) == _ld2(lower + n - 2))


cdef inline bint _is(const unsigned char* p, Py_ssize_t n, const char* lower,
                     Py_ssize_t m) noexcept:
    """``p[:n]`` equals the lowercase ``lower`` (``m`` bytes) ignoring case."""
    return n == m and _ieq(p, m, lower)


cdef inline bint _same(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept:
    """``a[:n] == b[:n]``, a word at a time (the last one ending at ``n``): cheaper than a
    call of memcmp for a header value."""
    cdef Py_ssize_t k = 0
    if n >= 8:
        while k < n - 8:
            if _ld8(a + k) != _ld8(b + k):
                return False
            k += 8
        return _ld8(a + n - 8) == _ld8(b + n - 8)
    if n >= 4:
        return _ld4(a) == _ld4(b) and _ld4(a + n - 4) == _ld4(b + n - 4)
    if n >= 2:
        return _ld2(a) == _ld2(b) and _ld2(a + n - 2) == _ld2(b + n - 2)
    return n == 0 or a[0] == b[0]


cdef enum:
    _OTHER, _LENGTH, _REFUSE, _CONNECTION, _REWRITE, _HOP_LINE, _UPGRADE

# the header names the scans tell apart, and what each is to them: the hop-by-hop ones, the
# framing, the rewritten ones, and the request names clients send on every pull (a request's
# known names are handed out as one object each: their hash is computed once, and dictionary
# lookups by them compare identity first); _REFUSE: the parser's to read (it takes
# Proxy-Connection for Connection, see the twin)
_KNOWN = sorted([
    (b"content-length", _LENGTH), (b"transfer-encoding", _REFUSE), (b"close", _REFUSE),
    (b"connection", _CONNECTION), (b"location", _REWRITE), (b"link", _REWRITE),
    (b"upgrade", _UPGRADE), (b"keep-alive", _HOP_LINE), (b"proxy-authenticate", _HOP_LINE),
    (b"proxy-authorization", _HOP_LINE), (b"proxy-connection", _REFUSE), (b"te", _HOP_LINE),
    (b"trailer", _HOP_LINE), (b"trailers", _HOP_LINE), (b"host", _OTHER), (b"accept", _OTHER),
    (b"user-agent", _OTHER), (b"range", _OTHER), (b"if-range", _OTHER),
    (b"if-none-match", _OTHER), (b"x-forwarded-for", _OTHER), (b"authorization", _OTHER),
    (b"accept-encoding", _OTHER),
], key=lambda known: len(known[0]))
cdef enum:
    _MAX_KNOWN = 32
    _LONGEST_KNOWN = 19
cdef tuple _KNOWN_NAMES = tuple([name for name, _ in _KNOWN])
cdef int _KNOWN_KIND[_MAX_KNOWN]
cdef unsigned char _KNOWN_AT[_LONGEST_KNOWN + 2]  # the ones n long: _KNOWN_AT[n] to [n + 1]
# each name as words: its first 8 bytes (zero after a shorter one's end), bytes 8 to 16, and
# its last 8; and the first n bytes of a word, n up to 8
cdef uint64_t _KNOWN_HEAD[_MAX_KNOWN]
cdef uint64_t _KNOWN_MID[_MAX_KNOWN]
cdef uint64_t _KNOWN_TAIL[_MAX_KNOWN]
cdef uint64_t _HEAD_MASK[9]
# the one known name n long whose first byte is a letter c's, by n * 32 + (c & 31), or -1: a
# name of the known ones' is the one there, if any (no two are the same length and letter)
cdef signed char _KNOWN_BY[(_LONGEST_KNOWN + 1) * 32]


cdef void _known_words():
    cdef unsigned char word[24]
    cdef bytes name
    cdef Py_ssize_t k, n
    for k in range(len(_KNOWN)):
        name = _KNOWN_NAMES[k]
        n = len(name)
        _KNOWN_KIND[k] = _KNOWN[k][1]
        memset(word, 0, 24)
        memcpy(word, <const char*>name, n)
        _KNOWN_HEAD[k] = _ld8(word)
        _KNOWN_MID[k] = _ld8(word + 8)
        _KNOWN_TAIL[k] = _ld8(word + n - 8) if n >= 8 else 0
    for n in range(_LONGEST_KNOWN + 2):
        _KNOWN_AT[n] = len([name for name in _KNOWN_NAMES if len(name) < n])
    memset(_KNOWN_BY, -1, sizeof(_KNOWN_BY))
    for k in range(len(_KNOWN)):
        name = _KNOWN_NAMES[k]
        n = len(name)
        assert _KNOWN_BY[n * 32 + (name[0] & 31)] < 0 and 97 <= name[0] <= 122
        _KNOWN_BY[n * 32 + (name[0] & 31)] = k
    for n in range(9):
        memset(word, 0, 8)
        memset(word, 0xFF, n)
        _HEAD_MASK[n] = _ld8(word)


assert len(_KNOWN) <= _MAX_KNOWN and max([len(name) for name in _KNOWN_NAMES]) == _LONGEST_KNOWN
_known_words()


# what end_to_end does with a header line, by name (the response side of _KNOWN's names)
cdef enum:
    _E2E_KEEP, _E2E_HOP, _E2E_CONNECTION, _E2E_CHUNKED, _E2E_LENGTH, _E2E_REWRITE


cdef int _name_kind(bytes name) noexcept:
    """end_to_end's ``name.lower()`` in HOP_BY_HOP / == ... / in _REWRITTEN, without
    making the lowercase copy: ``name`` is compared byte by byte with the known names of
    its length (ASCII letters case-insensitively, every other byte exactly)."""
    cdef const unsigned char* p = name
    cdef const unsigned char* known
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), k, i
    cdef unsigned char c
    if n > _LONGEST_KNOWN:
        return _E2E_KEEP
    for k in range(_KNOWN_AT[n], _KNOWN_AT[n + 1]):
        known = <const unsigned char*>PyBytes_AS_STRING(<object>PyTuple_GET_ITEM(_KNOWN_NAMES, k))
        for i in range(n):
            c = p[i]
            if 65 <= c <= 90:
                c += 32
            if c != known[i]:
                break
        else:
            return _E2E_KIND[k]
    return _E2E_KEEP


cdef int _E2E_KIND[_MAX_KNOWN]


cdef void _e2e_kinds():
    cdef Py_ssize_t k
    cdef bytes name
    for k in range(len(_KNOWN)):
        name = _KNOWN_NAMES[k]
        if name == b"connection":
            _E2E_KIND[k] = _E2E_CONNECTION
        elif name == b"transfer-encoding":
            _E2E_KIND[k] = _E2E_CHUNKED
        elif name in _HOP:
            _E2E_KIND[k] = _E2E_HOP
        elif name == b"content-length":
            _E2E_KIND[k] = _E2E_LENGTH
        elif name in _REWRITTEN:
            _E2E_KIND[k] = _E2E_REWRITE
        else:
            _E2E_KIND[k] = _E2E_KEEP


assert _HOP | _REWRITTEN | {b"content-length"} <= set(_KNOWN_NAMES)  # every name it tells apart
_e2e_kinds()


# at most this many header lines are scanned (more: the parser reads the response)
cdef enum:
    _MAX_FIELDS = 64


cdef struct _Field:
    Py_ssize_t name, name_end, value, value_end
    int kind
    int known  # the name's index in _KNOWN, or -1


cdef struct _Head:
    int status
    int count
    bint keep_alive
    bint rewrite
    Py_ssize_t end  # where the blank line starts
    Py_ssize_t block  # the joined size of the end-to-end lines
    long long length
    _Field fields[_MAX_FIELDS]


cdef inline Py_ssize_t _next_field(const unsigned char* p, Py_ssize_t line, Py_ssize_t end,
                                   _Field* field) noexcept:
    """Reads the header line at ``p[line]`` (after a CRLF) into ``field``: where it ends (at
    the next CR), or -1 when it is not a plain ``name: value`` line."""
    cdef Py_ssize_t i, n, k
    cdef uint64_t head
    i = _skip_name(p, line, end)
    if p[i] != 58:  # not ':' yet: a token byte but a letter, a digit or '-' is read on here
        while _CLASS[p[i]] & _TCHAR:
            i += 1
        if p[i] != 58:
            return -1
    if i == line:
        return -1
    field.name, field.name_end = line, i
    i += 1
    if p[i] == 32 and p[i + 1] > 32:  # the usual one space (p[i + 1] <= p[end]: p[i] is not it)
        i += 1
    else:
        while p[i] == 32 or p[i] == 9:
            i += 1
    field.value = i
    i = _field_run(p, i, end)
    # p[i - 1] is a field byte when the value is not empty: <= SP only for whitespace
    if i == field.value or p[i] != 13 or p[i - 1] <= 32:
        return -1  # an empty value, whitespace at its end, or not a line's end
    field.value_end = i
    field.kind, field.known = _OTHER, -1
    n = field.name_end - line
    if n > _LONGEST_KNOWN:
        return i
    k = _KNOWN_BY[n * 32 + (p[line] & 31)]
    if k < 0:
        return i
    if line + 8 <= i:
        head = _ld8(p + line)
    else:  # a line shorter than a word (a name of at most 5 bytes)
        head = 0
        memcpy(&head, p + line, n)
    head = (head | _CASE) & _HEAD_MASK[n if n < 8 else 8]
    if _KNOWN_HEAD[k] == head and (n <= 8 or (
            (_ld8(p + field.name_end - 8) | _CASE) == _KNOWN_TAIL[k]
            and (n <= 16 or (_ld8(p + line + 8) | _CASE) == _KNOWN_MID[k]))):
        field.kind, field.known = _KNOWN_KIND[k], k
    return i


cdef bint _scan_head(const unsigned char* p, Py_ssize_t n, _Head* head) noexcept:
    """Reads the head at ``p`` into ``head``; False for anything but the plainest kind."""
    cdef Py_ssize_t i, value_start, value_end, j, block = 0
    cdef int kind
    cdef long long length = -1
    cdef unsigned char c
    cdef bint keep_alive = True, rewrite = False
    cdef _Field* field = head.fields  # the next line's (the count: how far it moved)
    # status line: "HTTP/1.1 " 3DIGIT SP reason CRLF
    if n < 18 or memcmp(p, b"HTTP/1.1 ", 9) != 0:
        return False
    if not (p[9] >= 50 and p[9] <= 53 and p[10] >= 48 and p[10] <= 57
            and p[11] >= 48 and p[11] <= 57 and p[12] == 32):
        return False
    head.status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
    i = _field_run(p, 13, n)
    if i == 13 or p[i] != 13:
        return False  # an empty reason phrase, or a byte none holds
    # header lines, up to the blank line (the counts kept in locals: ``head`` is written once);
    # p[i] is a CR here, so i < n, and each byte is read only after the one before it was not
    # the NUL at p[n]
    while True:
        if p[i + 1] != 10:
            return False
        if p[i + 2] == 13:
            if p[i + 3] != 10:
                return False
            head.end = i
            break
        if field == head.fields + _MAX_FIELDS:
            return False
        i = _next_field(p, i + 2, n, field)
        if i < 0:
            return False
        kind = field.kind
        value_start, value_end = field.value, field.value_end
        if kind == _OTHER:
            block += field.name_end - field.name + value_end - value_start + 4
            field += 1
            continue
        if kind == _LENGTH:
            if length >= 0 or value_end - value_start > 18:
                return False
            length = 0
            for j in range(value_start, value_end):
                c = p[j] - 48  # (an unsigned char: a byte below '0' wraps above 9)
                if c > 9:
                    return False
                length = length * 10 + c
            block += field.name_end - field.name + value_end - value_start + 4
        elif kind == _REFUSE:
            return False
        elif kind == _CONNECTION:
            if _is(p + value_start, value_end - value_start, b"close", 5):
                keep_alive = False
            elif not _is(p + value_start, value_end - value_start, b"keep-alive", 10):
                return False
        elif kind == _REWRITE:
            rewrite = True
        field += 1
    if length < 0:
        return False
    head.length = length
    head.count = field - head.fields
    head.block, head.keep_alive, head.rewrite = block, keep_alive, rewrite
    return True


cdef class ResponseScan:
    """What :func:`scan_response` read of the last response it took (see the twin)."""

    def __cinit__(self):
        self.status, self.block, self.body_at, self.keep_alive = 0, None, 0, False


cpdef bint scan_response(bytes data, bint head_only, ResponseScan scan) except -1:
    """Whether ``data`` is one whole response of the plainest kind, read into ``scan`` (see
    the twin)."""
    if scan is None:
        raise TypeError("scan_response takes bytes and a ResponseScan")
    cdef const unsigned char* p = data
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), body_at, body, k, at = 0, run = 0, run_end = 0
    cdef _Head head
    cdef _Field* field
    cdef bytes block
    cdef char* out
    if not _scan_head(p, n, &head):
        return False
    body_at = head.end + 4
    if head_only or head.status == 204 or head.status == 304:
        body = 0
    else:
        body = <Py_ssize_t>head.length
    if n != body_at + body:
        return False
    scan.status, scan.body_at, scan.keep_alive = head.status, body_at, head.keep_alive
    if head.rewrite:
        scan.block = None
        return True
    # lines that stand in data as "Name: value\r\n", one after another, are copied at once
    block = PyBytes_FromStringAndSize(NULL, head.block)
    out = PyBytes_AS_STRING(block)
    for k in range(head.count):
        field = &head.fields[k]
        if field.kind != _LENGTH and field.kind != _OTHER:
            continue
        if field.value == field.name_end + 2 and p[field.name_end + 1] == 32:
            if field.name != run_end:
                memcpy(out + at, p + run, run_end - run)
                at += run_end - run
                run = field.name
            run_end = field.value_end + 2
            continue
        memcpy(out + at, p + run, run_end - run)
        at += run_end - run
        run = run_end = 0
        memcpy(out + at, p + field.name, field.name_end - field.name)
        at += field.name_end - field.name
        out[at] = 58
        out[at + 1] = 32
        at += 2
        memcpy(out + at, p + field.value, field.value_end - field.value)
        at += field.value_end - field.value
        out[at] = 13
        out[at + 1] = 10
        at += 2
    memcpy(out + at, p + run, run_end - run)
    scan.block = block
    return True


cpdef head_fields(bytes data):
    """The header fields of a head ``scan_response`` took, as the parser gives them."""
    cdef const unsigned char* p = data
    cdef _Head head
    cdef _Field* field
    cdef list fields = []
    cdef Py_ssize_t k
    if not _scan_head(p, PyBytes_GET_SIZE(data), &head):
        raise ValueError("not a head scan_response takes")
    for k in range(head.count):
        field = &head.fields[k]
        fields.append((
            PyBytes_FromStringAndSize(<char*>p + field.name, field.name_end - field.name),
            PyBytes_FromStringAndSize(<char*>p + field.value, field.value_end - field.value),
        ))
    return fields


# scan_request: the strict subset of request heads it reads itself (see the twin).
# The last line of each known name but Authorization a request had, (name, value): a client
# sends the same ones on every pull, and the next request's same line is this tuple again.
cdef list _LAST_LINES = [None] * len(_KNOWN_NAMES)
cdef Py_ssize_t _AUTHORIZATION = _KNOWN_NAMES.index(b"authorization")
cdef inline str _ascii(const unsigned char* p, Py_ssize_t n):
    """``p[:n]`` (ASCII) as a str."""
    cdef str text = PyUnicode_New(n, 127)
    memcpy(PyUnicode_DATA(text), p, n)
    return text


cdef class RequestScan:
    """What :func:`scan_request` read of the last request head it took (see the twin)."""

    def __cinit__(self):
        self.method = self.path = self.query = u""
        self.headers = []
        self.http11 = self.keep_alive = False


cpdef bint scan_request(bytes data, Py_ssize_t max_bytes, Py_ssize_t max_url, Py_ssize_t max_fields,
                        RequestScan scan) except -1:
    """Whether ``data`` is one whole GET or HEAD request head of the plainest kind, read into
    ``scan`` (see the twin)."""
    if scan is None:
        raise TypeError("scan_request takes bytes and a RequestScan")
    cdef const unsigned char* p = data
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i, end, url, url_end, query = -1, line
    cdef Py_ssize_t name_end, value_start, value_end, count = 0, fields = 0, j
    cdef int kind
    cdef bint http11, close = False, keep = False
    cdef str method
    cdef bytes name, value
    cdef _Field field
    cdef char* lower
    cdef unsigned char c
    cdef list headers = []
    cdef tuple last
    if n < 18 or p[n - 4] != 13 or p[n - 3] != 10 or p[n - 2] != 13 or p[n - 1] != 10:
        return False
    end = n - 4
    if memcmp(p, b"GET ", 4) == 0:
        method = u"GET"
        i = 4
    elif memcmp(p, b"HEAD ", 5) == 0:
        method = u"HEAD"
        i = 5
    else:
        return False
    url = i
    if p[i] != 47:  # '/'
        return False
    i = _target_run(p, i, end, _QUERIES, _PATH)
    if p[i] == 63:  # '?'
        query = i
        i = _target_run(p, i + 1, end, _HASHES, _TARGET)
    url_end = i
    if i + 9 > end or p[i] != 32 or memcmp(p + i + 1, b"HTTP/1.", 7) != 0:
        return False
    if p[i + 8] == 49:
        http11 = True
    elif p[i + 8] == 48:
        http11 = False
    else:
        return False
    i += 9
    count = url_end - url
    if count > max_url:
        return False
    while i < end:
        if p[i] != 13 or p[i + 1] != 10:
            return False
        i = _next_field(p, i + 2, end, &field)
        if i < 0:
            return False
        kind = field.kind
        line, name_end = field.name, field.name_end
        value_start, value_end = field.value, field.value_end
        if kind != _OTHER:
            if kind == _LENGTH or kind == _REFUSE or kind == _UPGRADE:
                return False  # a body, or what the parser judges
            if kind == _CONNECTION:
                if _is(p + value_start, value_end - value_start, b"close", 5):
                    close = True
                elif _is(p + value_start, value_end - value_start, b"keep-alive", 10):
                    keep = True
                else:
                    return False
        fields += 1
        count += name_end - line + value_end - value_start + 4
        if fields > max_fields or count > max_bytes:
            return False
        if field.known >= 0:
            last = <tuple>_LAST_LINES[field.known]
            if last is not None:
                value = <bytes>PyTuple_GET_ITEM(last, 1)
                if (PyBytes_GET_SIZE(value) == value_end - value_start
                        and _same(<const unsigned char*>PyBytes_AS_STRING(value),
                                  p + value_start, value_end - value_start)):
                    headers.append(last)
                    continue
            name = _KNOWN_NAMES[field.known]
        else:
            name = PyBytes_FromStringAndSize(NULL, name_end - line)
            lower = PyBytes_AS_STRING(name)
            for j in range(name_end - line):
                c = p[line + j]
                lower[j] = c + 32 if c >= 65 and c <= 90 else c
        value = PyBytes_FromStringAndSize(<char*>p + value_start, value_end - value_start)
        last = (name, value)
        if field.known >= 0 and field.known != _AUTHORIZATION:
            _LAST_LINES[field.known] = last
        headers.append(last)
    if close and keep:
        return False
    scan.method = method
    if query < 0:
        scan.path, scan.query = _ascii(p + url, url_end - url), u""
    else:
        scan.path = _ascii(p + url, query - url)
        scan.query = _ascii(p + query + 1, url_end - query - 1)
    scan.headers, scan.http11 = headers, http11
    scan.keep_alive = (http11 and not close) or (not http11 and keep)
    return True


# forward_head: the upstream request head. A request's known names are looked up in
# ForwardLines by their index in _KNOWN (the object scan_request handed out, or the same bytes),
# the others in a dict (empty for the router's own table: every name it forwards is known).
cdef dict _KNOWN_INDEX = {name: k for k, name in enumerate(_KNOWN_NAMES)}
cdef Py_ssize_t _FORWARDED_FOR = _KNOWN_NAMES.index(b"x-forwarded-for")


cdef class ForwardLines:
    """The client request headers ``forward_head`` passes on: each one's line start
    (``Name: ``) by its lowercased name (bytes both)."""

    def __cinit__(self, *args, **kwargs):
        self.known = (None,) * len(_KNOWN_NAMES)
        self.others = {}

    def __init__(self, lines):
        cdef list known = [None] * len(_KNOWN_NAMES)
        cdef dict others = {}
        for name, line in lines.items():
            if type(name) is not bytes or type(line) is not bytes:
                raise TypeError("header names and line starts are bytes")
            index = _KNOWN_INDEX.get(name)
            if index is None:
                others[name] = line
            else:
                known[index] = line
        self.known = tuple(known)
        self.others = others


cdef extern from "Python.h":
    bint PyUnicode_IS_COMPACT_ASCII(object o)


cdef inline const char* _utf8(str text, Py_ssize_t* n) except NULL:
    """``text`` encoded (without a copy: an ASCII str's own bytes)."""
    if PyUnicode_IS_COMPACT_ASCII(text):
        n[0] = PyUnicode_GET_LENGTH(text)
        return <const char*>PyUnicode_DATA(text)
    return PyUnicode_AsUTF8AndSize(text, n)


cdef inline Py_ssize_t _known_index(PyObject* name) noexcept:
    """The index in _KNOWN of the bytes ``name`` (the object scan_request handed out, or the
    same bytes), or -1."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(<object>name), k
    if n > _LONGEST_KNOWN:
        return -1
    for k in range(_KNOWN_AT[n], _KNOWN_AT[n + 1]):
        if PyTuple_GET_ITEM(_KNOWN_NAMES, k) == name:
            return k
    for k in range(_KNOWN_AT[n], _KNOWN_AT[n + 1]):
        if memcmp(PyBytes_AS_STRING(<object>PyTuple_GET_ITEM(_KNOWN_NAMES, k)),
                  PyBytes_AS_STRING(<object>name), n) == 0:
            return k
    return -1


cdef inline PyObject* _line_start(ForwardLines lines, PyObject* name, Py_ssize_t* known):
    """The line start (borrowed) ``lines`` has for the bytes ``name``, or NULL; ``known``: the
    name's index in _KNOWN."""
    cdef Py_ssize_t k = _known_index(name)
    known[0] = k
    if k >= 0:
        line = PyTuple_GET_ITEM(lines.known, k)
        return NULL if line == <PyObject*>None else line
    if lines.others:  # exact bytes keys: the lookup runs no Python code
        return PyDict_GetItem(lines.others, <object>name)
    return NULL


cdef inline int _field_pair(list headers, Py_ssize_t i, PyObject** name,
                            PyObject** value) except -1:
    """Borrows the name and the value of ``headers[i]``, a tuple of two bytes."""
    cdef PyObject* item = PyList_GET_ITEM(headers, i)
    if not PyTuple_CheckExact(<object>item) or PyTuple_GET_SIZE(<object>item) != 2:
        raise TypeError("headers are (name, value) tuples")
    name[0] = PyTuple_GET_ITEM(<object>item, 0)
    value[0] = PyTuple_GET_ITEM(<object>item, 1)
    if not PyBytes_CheckExact(<object>name[0]) or not PyBytes_CheckExact(<object>value[0]):
        raise TypeError("header names and values are bytes")
    return 0


cpdef forward_head(str method, bytes start, list headers, ForwardLines lines, str client_ip):
    """A request head to send upstream, one bytes (see the twin). Between the two passes
    over ``headers`` no Python code runs: the second reads what the first measured."""
    if method is None or start is None or headers is None or lines is None or client_ip is None:
        raise TypeError("forward_head takes a method, a start, headers, lines and an address")
    cdef Py_ssize_t method_n, ip_n, k, i, at, fields_end, forwarded = 0, count = 0, forwarded_at
    cdef Py_ssize_t fields = PyList_GET_SIZE(headers)
    cdef const char* method_p = _utf8(method, &method_n)
    cdef const char* ip_p = _utf8(client_ip, &ip_n)
    cdef Py_ssize_t size = method_n + 1 + PyBytes_GET_SIZE(start)
    cdef PyObject* name
    cdef PyObject* value
    cdef PyObject* line
    cdef bytes head
    cdef char* out
    for i in range(fields):
        _field_pair(headers, i, &name, &value)
        line = _line_start(lines, name, &k)
        if line != NULL:
            size += PyBytes_GET_SIZE(<object>line) + PyBytes_GET_SIZE(<object>value) + 2
        elif k == _FORWARDED_FOR:
            count += 1
            forwarded += PyBytes_GET_SIZE(<object>value) + 2  # the value and ", "
    if count == 1 and forwarded == 2:
        forwarded = 0  # one empty value: none
    fields_end = size
    size += 17 + forwarded + ip_n + 4
    head = PyBytes_FromStringAndSize(NULL, size)
    out = PyBytes_AS_STRING(head)
    memcpy(out, method_p, method_n)
    out[method_n] = 32
    at = method_n + 1
    memcpy(out + at, PyBytes_AS_STRING(start), PyBytes_GET_SIZE(start))
    at += PyBytes_GET_SIZE(start)
    forwarded_at = fields_end + 17
    for i in range(fields):
        _field_pair(headers, i, &name, &value)
        line = _line_start(lines, name, &k)
        if line != NULL:
            memcpy(out + at, PyBytes_AS_STRING(<object>line), PyBytes_GET_SIZE(<object>line))
            at += PyBytes_GET_SIZE(<object>line)
            memcpy(out + at, PyBytes_AS_STRING(<object>value), PyBytes_GET_SIZE(<object>value))
            at += PyBytes_GET_SIZE(<object>value)
            out[at] = 13
            out[at + 1] = 10
            at += 2
        elif k == _FORWARDED_FOR and forwarded:
            memcpy(out + forwarded_at, PyBytes_AS_STRING(<object>value),
                   PyBytes_GET_SIZE(<object>value))
            forwarded_at += PyBytes_GET_SIZE(<object>value)
            out[forwarded_at] = 44
            out[forwarded_at + 1] = 32
            forwarded_at += 2
    memcpy(out + at, b"X-Forwarded-For: ", 17)
    memcpy(out + forwarded_at, ip_p, ip_n)
    memcpy(out + forwarded_at + ip_n, b"\r\n\r\n", 4)
    return head


cpdef observe(list hist, tuple bounds, double value):
    """Counts ``value`` into a histogram (``metrics``: bucket counts, the +Inf one last, then
    the sum): the first bucket whose bound is not below it, as ``bisect_left`` finds it."""
    cdef Py_ssize_t i = 0, n = len(bounds)
    while i < n and <double>bounds[i] < value:
        i += 1
    hist[i] = <double>hist[i] + 1.0
    hist[n + 1] = <double>hist[n + 1] + value


# write_to: a write that the kernel takes at once goes to the socket itself (see the twin).
cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL


# The two questions write_to asks a transport, as the methods its type holds: for a type whose
# instances all find the same ones for good (``hr_wire_fixed_method``: uvloop's transports), a
# call of the method found once instead of a look-up by name per call; any other type's are
# asked by name. One type at a time (a process writes to one kind of plain transport).
cdef extern from *:
    """
    /* The method ``name`` as ``obj.name`` finds it for every instance of ``type``, for good:
       the type and each of its bases immutable (no attribute can be set on them), no instance
       dictionary (none can shadow it), the generic attribute look-up, and what the look-up
       finds a method descriptor (called with the instance first, as ``obj.name()`` calls it).
       Borrowed; NULL (and no error) when any of that does not hold. */
    static PyObject *hr_wire_fixed_method(PyTypeObject *type, PyObject *name) {
        PyObject *mro = type->tp_mro, *found;
        Py_ssize_t i;
        if (type->tp_dictoffset != 0 || type->tp_getattro != PyObject_GenericGetAttr
                || mro == NULL || !PyTuple_CheckExact(mro))
            return NULL;
        for (i = 0; i < PyTuple_GET_SIZE(mro); i++) {
            if (!PyType_HasFeature((PyTypeObject *)PyTuple_GET_ITEM(mro, i),
                                   Py_TPFLAGS_IMMUTABLETYPE))
                return NULL;
        }
        found = _PyType_Lookup(type, name);
        if (found == NULL || !PyType_HasFeature(Py_TYPE(found), Py_TPFLAGS_METHOD_DESCRIPTOR))
            return NULL;
        return found;
    }
    """
    PyObject *hr_wire_fixed_method(PyTypeObject *type, object name)


cdef object _fixed_type = None  # the last plain transport's type written to
cdef object _fixed_buffer_size = None  # its methods (None: asked by name)
cdef object _fixed_is_closing = None


cdef int _fix(object kind) except -1:
    """The methods of transports of type ``kind``, found once."""
    global _fixed_type, _fixed_buffer_size, _fixed_is_closing
    cdef PyObject *size = hr_wire_fixed_method(<PyTypeObject *>kind, "get_write_buffer_size")
    cdef PyObject *closing = hr_wire_fixed_method(<PyTypeObject *>kind, "is_closing")
    _fixed_type = kind
    if size is NULL or closing is NULL:
        _fixed_buffer_size = _fixed_is_closing = None
    else:
        _fixed_buffer_size, _fixed_is_closing = <object>size, <object>closing
    return 0


cpdef bint write_to(transport, int fd, bint queued, bytes data) except -1:
    """``transport.write(data)``, by a ``send`` of its own when ``fd`` is the transport's plain
    socket and nothing waits in its buffer; True when some of it may wait there now."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef ssize_t sent
    cdef bint closing
    if fd >= 0:
        if type(transport) is not _fixed_type:
            _fix(type(transport))
        if _fixed_is_closing is None:  # asked by name
            if queued:
                queued = transport.get_write_buffer_size() != 0
            closing = not queued and transport.is_closing()
        else:
            if queued:
                queued = _fixed_buffer_size(transport) != 0
            closing = not queued and _fixed_is_closing(transport)
        if not queued and not closing:
            sent = send(fd, PyBytes_AS_STRING(data), <size_t>n, MSG_DONTWAIT | MSG_NOSIGNAL)
            if sent == n:
                return False
            if sent > 0:  # -1 (EAGAIN, or an error): the transport buffers it, or reports it
                data = data[sent:]
    transport.write(data)
    return True



# read_from / send_to: a plain socket read and written by the data plane itself (see the twin).
cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void* buf, size_t n, int flags)
cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN, EWOULDBLOCK, EINTR
cdef enum:
    _READ_SIZE = 256 * 1024
cdef char _read_buffer[_READ_SIZE]  # what one read takes, copied out at once


cpdef read_from(int fd):
    """One read of the non-blocking socket ``fd``: its bytes, ``b""`` at its end, None when
    nothing is there (see the twin)."""
    cdef ssize_t n = recv(fd, _read_buffer, _READ_SIZE, MSG_DONTWAIT)
    cdef int err
    if n >= 0:
        return PyBytes_FromStringAndSize(_read_buffer, n)
    err = errno
    if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
        return None
    raise OSError(err, os.strerror(err))


cpdef Py_ssize_t send_to(int fd, bytes data, Py_ssize_t start) except -2:
    """Sends ``data[start:]`` on the non-blocking socket ``fd``: how many bytes the kernel
    took (0 when it takes none now; see the twin)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data) - start
    cdef ssize_t sent = send(fd, PyBytes_AS_STRING(data) + start, <size_t>n,
                             MSG_DONTWAIT | MSG_NOSIGNAL)
    cdef int err
    if sent >= 0:
        return sent
    err = errno
    if err == EAGAIN or err == EWOULDBLOCK or err == EINTR:
        return 0
    raise OSError(err, os.strerror(err))


# -- the per-request metrics (``metrics``): histograms and counts in C arrays ------------------

cdef inline Py_ssize_t _index(long i, Py_ssize_t n) except -1:
    """``i`` as a list index into ``n`` items (-1: the last), or IndexError as a list's."""
    if i < 0:
        i += n
    if i < 0 or i >= n:
        raise IndexError("list index out of range")
    return i


cdef inline void _count(double *hist, const double *bounds, Py_ssize_t n, double value) noexcept:
    """:func:`observe` into a C histogram of ``n`` bounds."""
    cdef Py_ssize_t i = 0
    while i < n and bounds[i] < value:
        i += 1
    hist[i] += 1.0
    hist[n + 1] += value


cdef double *_doubles(Py_ssize_t n) except NULL:
    cdef double *out = <double *>calloc(n if n > 0 else 1, sizeof(double))
    if out is NULL:
        raise MemoryError()
    return out


cdef double *_bounds(bounds) except NULL:
    cdef tuple values = tuple(bounds)
    cdef double *out = _doubles(len(values))
    for i, bound in enumerate(values):
        out[i] = bound
    return out


cdef inline list _histogram(const double *hist, Py_ssize_t n):
    return [hist[i] for i in range(n)]


cdef class RequestTable:
    """Request duration histograms (bucket counts, the +Inf one last, then the sum) by method,
    route kind and status class, and the bytes sent by route kind, in C arrays: the twin's
    lists of lists (``_wire_py.RequestTable``), a histogram allocated when first counted into."""

    def __cinit__(self, methods, Py_ssize_t kinds, Py_ssize_t classes, bounds):
        self.methods = tuple(methods)
        if not self.methods or kinds < 1 or classes < 1:
            raise ValueError("a request table needs a method, a kind and a class")
        self.nkinds, self.nclasses = kinds, classes
        self.nbounds = len(bounds)
        self.bounds = _bounds(bounds)
        self.cells = <double **>calloc(len(self.methods) * kinds * classes, sizeof(double *))
        self.sent_bytes = <long long *>calloc(kinds, sizeof(long long))
        if self.cells is NULL or self.sent_bytes is NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.cells is not NULL:
            for i in range(len(self.methods) * self.nkinds * self.nclasses):
                free(self.cells[i])
        free(self.cells)
        free(self.sent_bytes)
        free(self.bounds)

    def rows(self, str method):
        """A method's histograms by [kind][class] (copies), None where none was counted."""
        if method not in self.methods:
            raise KeyError(method)
        cdef Py_ssize_t m = self.methods.index(method), k, c
        cdef double *hist
        out = []
        for k in range(self.nkinds):
            row = []
            for c in range(self.nclasses):
                hist = self.cells[(m * self.nkinds + k) * self.nclasses + c]
                row.append(None if hist is NULL else _histogram(hist, self.nbounds + 2))
            out.append(row)
        return out

    def sent(self):
        """Bytes sent, by kind."""
        return [self.sent_bytes[k] for k in range(self.nkinds)]


cpdef count_request(RequestTable table, str method, long kind, long status, double duration,
                    long long sent):
    """One request answered: its duration into its histogram, its bytes to its kind's."""
    cdef Py_ssize_t m = 0, last = len(table.methods) - 1
    while m < last and not (method == <str>PyTuple_GET_ITEM(table.methods, m)):
        m += 1
    cdef Py_ssize_t k = _index(kind, table.nkinds)
    cdef Py_ssize_t at = (m * table.nkinds + k) * table.nclasses + _index(status // 100,
                                                                          table.nclasses)
    cdef double *hist = table.cells[at]
    if hist is NULL:
        hist = table.cells[at] = _doubles(table.nbounds + 2)
    _count(hist, table.bounds, table.nbounds, duration)
    table.sent_bytes[k] += sent


cdef class ProjectCalls:
    """One project's requests to Harbor: counts by status slot, other labels' in a dict, and
    the duration histogram."""

    def __cinit__(self, Py_ssize_t slots, Py_ssize_t width):
        self.counts = <long long *>calloc(slots, sizeof(long long))
        self.duration = _doubles(width)
        self.extra = {}
        if self.counts is NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.counts)
        free(self.duration)


cdef class UpstreamTable:
    """Requests to Harbor by project: counts by status label (a status of ``codes`` is its
    own, any other its class's, ``"5xx"``; a label given as one, any), and a duration
    histogram a project; a status of three digits is counted in a C array by its slot."""

    def __cinit__(self, codes, bounds):
        labels = []
        for code in codes:
            if not 0 <= code < 1000:
                raise ValueError(f"status code out of range: {code}")
            if str(code) not in labels:
                labels.append(str(code))
        cdef Py_ssize_t named = len(labels), status
        labels += [f"{c}xx" for c in range(10)]
        self.labels = tuple(labels)
        self.slots = {label: slot for slot, label in enumerate(labels)}
        for status in range(1000):
            self.status_slot[status] = self.slots.get(str(status), named + status // 100)
        self.nbounds = len(bounds)
        self.bounds = _bounds(bounds)
        self.projects = {}
        self.last_project = object()  # no caller's

    def __dealloc__(self):
        free(self.bounds)

    cdef ProjectCalls calls(self, str project):
        # the last project's record is kept: a caller passes the same string object again (a
        # project's name), and comparing it is cheaper than a dictionary lookup
        if project is self.last_project:
            return self.last_calls
        cdef ProjectCalls calls
        cdef PyObject *found = PyDict_GetItem(self.projects, project)
        if found is NULL:
            calls = ProjectCalls(len(self.labels), self.nbounds + 2)
            self.projects[project] = calls
        else:
            calls = <ProjectCalls>found
        self.last_project, self.last_calls = project, calls
        return calls

    def counts(self):
        """Requests by (project, status label)."""
        cdef ProjectCalls calls
        cdef Py_ssize_t slot
        out = {}
        for project, calls in self.projects.items():
            for slot in range(len(self.labels)):
                if calls.counts[slot]:
                    out[project, self.labels[slot]] = calls.counts[slot]
            for label, count in calls.extra.items():
                out[project, label] = count
        return out

    def durations(self):
        """Each project's duration histogram (a copy)."""
        cdef ProjectCalls calls
        return {project: _histogram(calls.duration, self.nbounds + 2)
                for project, calls in self.projects.items()}


cpdef count_upstream(UpstreamTable table, str project, str label, double duration):
    """A request to ``project`` that ended as ``label`` (a status's, ``timeout``, ``error``)."""
    cdef ProjectCalls calls = table.calls(project)
    cdef PyObject *slot = PyDict_GetItem(table.slots, label)
    if slot is NULL:
        calls.extra[label] = calls.extra.get(label, 0) + 1
    else:
        calls.counts[<Py_ssize_t><object>slot] += 1
    _count(calls.duration, table.bounds, table.nbounds, duration)


cpdef count_answer(UpstreamTable table, str project, long status, double duration):
    """:func:`count_upstream` of a request Harbor answered with ``status``."""
    if not 0 <= status < 1000:
        count_upstream(table, project, f"{status // 100}xx", duration)
        return
    cdef ProjectCalls calls = table.calls(project)
    calls.counts[table.status_slot[status]] += 1
    _count(calls.duration, table.bounds, table.nbounds, duration)


cpdef double perf_counter() except? -1.0:
    """``time.perf_counter()`` without the call through Python: on Linux (CPython's pytime.c)
    it is the monotonic clock (``CLOCK_MONOTONIC``), turned into seconds the same way; a C
    double for compiled callers."""
    cdef timespec ts
    cdef long long ns
    if clock_gettime(CLOCK_MONOTONIC, &ts) != 0:
        return time.perf_counter()  # which raises what the clock says
    ns = <long long>ts.tv_sec * 1000000000 + ts.tv_nsec
    if ns % 1000000000 == 0:
        return <double>(ns // 1000000000)
    return <double>ns / 1e9
