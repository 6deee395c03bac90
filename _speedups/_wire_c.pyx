# cython: language_level=3, boundscheck=False, wraparound=False
"""Per-request byte work of the data plane: the compiled twin of ``harbor_router/_wire_py.py``.

Same functions, same results (the twin is the specification; the tests run both): name, tag
and digest validation as typed character loops instead of regular expressions; header
rewriting and head joining with fewer temporary objects.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.string cimport memcmp, memcpy

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


def valid_name(str name):
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


def valid_tag(str tag):
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


def valid_digest(str digest):
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


def end_to_end(list headers, bytes needle, bytes replacement):
    """Headers to send on, in order, multi-valued ones intact; and the body's length when
    ``Content-Length`` frames it (present, digits, no ``Transfer-Encoding``), else -1."""
    cdef list out = []
    cdef object extra = None
    cdef bint has_length = False, chunked = False
    cdef bytes length_value = b""
    cdef long long length = 0
    cdef Py_ssize_t i
    cdef unsigned char c
    cdef bytes name, value, lower
    for name, value in headers:
        lower = name.lower()
        if lower in _HOP:
            if lower == b"connection":
                tokens = connection_tokens(value)
                extra = tokens if extra is None else extra | tokens
            elif lower == b"transfer-encoding":
                chunked = True
            continue
        if lower == b"content-length":
            if not has_length:
                has_length = True
                length_value = value.strip()
        elif lower in _REWRITTEN and needle in value:
            value = value.replace(needle, replacement)
        out.append((name, value))
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


def build_head(bytes status_line, headers, bytes extra, long content_length, bint close):
    """Status line, headers, ``extra`` (pre-joined lines), framing, blank line; one bytes.
    ``content_length`` < 0 adds no ``Content-Length``."""
    cdef list parts = [status_line]
    cdef bytes name, value
    for name, value in headers:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    if PyBytes_GET_SIZE(extra):
        parts.append(extra)
    if content_length >= 0:
        parts.append(b"Content-Length: %d\r\n" % content_length)
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


# scan_response: the strict subset of HTTP/1.1 responses it reads itself (see the twin).
# byte classes, one table lookup per byte
cdef enum:
    _TCHAR = 1  # a header name's (RFC 9110 token)
    _FIELD = 2  # a header value's or a reason phrase's: HTAB, SP, VCHAR, obs-text
    _TARGET = 4  # a request target's: visible ASCII but '#'
cdef unsigned char _CLASS[256]
for _c in range(256):
    _CLASS[_c] = (
        (_TCHAR if (48 <= _c <= 57 or 65 <= _c <= 90 or 97 <= _c <= 122
                    or chr(_c) in "!#$%&'*+-.^_`|~") else 0)
        | (_FIELD if _c == 9 or (_c >= 32 and _c != 127) else 0)
        | (_TARGET if 32 < _c < 127 and _c != 35 else 0)
    )


cdef inline bint _tchar(unsigned char c):
    return _CLASS[c] & _TCHAR


cdef inline bint _vchar(unsigned char c):
    return c > 32 and c != 127


cdef inline bint _field_char(unsigned char c):
    return _CLASS[c] & _FIELD


cdef inline bint _is(const unsigned char* p, Py_ssize_t n, const char* lower, Py_ssize_t m):
    """``p[:n]`` equals the lowercase ASCII ``lower`` ignoring case."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n != m:
        return False
    for i in range(n):
        c = p[i]
        if c >= 65 and c <= 90:
            c += 32
        if c != <unsigned char>lower[i]:
            return False
    return True


cdef enum:
    _OTHER, _LENGTH, _REFUSE, _CONNECTION, _REWRITE, _HOP_LINE


cdef int _classify(const unsigned char* p, Py_ssize_t n):
    if n == 14 and _is(p, n, b"content-length", 14):
        return _LENGTH
    if (n == 17 and _is(p, n, b"transfer-encoding", 17)) or (n == 5 and _is(p, n, b"close", 5)):
        return _REFUSE
    if n == 10 and _is(p, n, b"connection", 10):
        return _CONNECTION
    if (n == 8 and _is(p, n, b"location", 8)) or (n == 4 and _is(p, n, b"link", 4)):
        return _REWRITE
    if ((n == 10 and _is(p, n, b"keep-alive", 10))
            or (n == 18 and (_is(p, n, b"proxy-authenticate", 18)
                             or _is(p, n, b"proxy-connection", 18)))
            or (n == 19 and _is(p, n, b"proxy-authorization", 19))
            or (n == 2 and _is(p, n, b"te", 2))
            or (n == 7 and _is(p, n, b"trailer", 7))
            or (n == 8 and _is(p, n, b"trailers", 8))
            or (n == 7 and _is(p, n, b"upgrade", 7))):
        return _HOP_LINE
    return _OTHER


# at most this many header lines are scanned (more: the parser reads the response)
cdef enum:
    _MAX_FIELDS = 64


cdef struct _Field:
    Py_ssize_t name, name_end, value, value_end
    int kind


cdef struct _Head:
    int status
    int count
    bint keep_alive
    bint rewrite
    Py_ssize_t end  # where the blank line starts
    long long length
    _Field fields[_MAX_FIELDS]


cdef Py_ssize_t _next_field(const unsigned char* p, Py_ssize_t i, Py_ssize_t end, _Field* field):
    """Reads the header line after the CRLF at ``p[i]`` into ``field``: where it ends (at
    the next CR), or -1 when it is not a plain ``name: value`` line."""
    cdef Py_ssize_t line
    if p[i] != 13 or p[i + 1] != 10:
        return -1
    line = i = i + 2
    while i < end and _tchar(p[i]):
        i += 1
    if i == line or i >= end or p[i] != 58:  # ':'
        return -1
    field.name, field.name_end = line, i
    i += 1
    while i < end and (p[i] == 32 or p[i] == 9):
        i += 1
    field.value = i
    while i < end and p[i] != 13:
        if not _field_char(p[i]):
            return -1
        i += 1
    if i == field.value or not _vchar(p[i - 1]):
        return -1  # an empty value, or whitespace at its end
    field.value_end = i
    field.kind = _classify(p + line, field.name_end - line)
    return i


cdef bint _scan_head(const unsigned char* p, Py_ssize_t n, _Head* head):
    """Reads the head at ``p`` into ``head``; False for anything but the plainest kind."""
    cdef Py_ssize_t i, value_start, value_end, j
    cdef int kind
    cdef long long length = -1
    cdef unsigned char c
    cdef _Field* field
    head.keep_alive = True
    head.rewrite = False
    head.count = 0
    # status line: "HTTP/1.1 " 3DIGIT SP reason CRLF
    if n < 18 or memcmp(p, b"HTTP/1.1 ", 9) != 0:
        return False
    if not (p[9] >= 50 and p[9] <= 53 and p[10] >= 48 and p[10] <= 57
            and p[11] >= 48 and p[11] <= 57 and p[12] == 32):
        return False
    head.status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
    i = 13
    while i < n and p[i] != 13:
        if not _field_char(p[i]):
            return False
        i += 1
    if i == 13:
        return False  # an empty reason phrase
    # header lines, up to the blank line
    while True:
        if i + 3 >= n:
            return False
        if p[i] == 13 and p[i + 1] == 10 and p[i + 2] == 13 and p[i + 3] == 10:
            head.end = i
            break
        if head.count == _MAX_FIELDS:
            return False
        field = &head.fields[head.count]
        i = _next_field(p, i, n, field)
        if i < 0:
            return False
        kind = field.kind
        value_start, value_end = field.value, field.value_end
        if kind == _LENGTH:
            if length >= 0 or value_end - value_start > 18:
                return False
            length = 0
            for j in range(value_start, value_end):
                c = p[j]
                if c < 48 or c > 57:
                    return False
                length = length * 10 + (c - 48)
        elif kind == _REFUSE:
            return False
        elif kind == _CONNECTION:
            if _is(p + value_start, value_end - value_start, b"close", 5):
                head.keep_alive = False
            elif not _is(p + value_start, value_end - value_start, b"keep-alive", 10):
                return False
        elif kind == _REWRITE:
            head.rewrite = True
        head.count += 1
    if length < 0:
        return False
    head.length = length
    return True


def scan_response(bytes data, bint head_only):
    """One whole response in ``data`` of the plainest kind, or None (see the twin)."""
    cdef const unsigned char* p = data
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), body_at, body, size = 0, k, at
    cdef _Head head
    cdef _Field* field
    cdef bytes block
    cdef char* out
    if not _scan_head(p, n, &head):
        return None
    body_at = head.end + 4
    if head_only or head.status == 204 or head.status == 304:
        body = 0
    else:
        body = <Py_ssize_t>head.length
    if n != body_at + body:
        return None
    if head.rewrite:
        return head.status, None, body_at, head.keep_alive
    for k in range(head.count):
        field = &head.fields[k]
        if field.kind == _LENGTH or field.kind == _OTHER:
            size += field.name_end - field.name + field.value_end - field.value + 4
    block = PyBytes_FromStringAndSize(NULL, size)
    out = PyBytes_AS_STRING(block)
    at = 0
    for k in range(head.count):
        field = &head.fields[k]
        if field.kind == _LENGTH or field.kind == _OTHER:
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
    return head.status, block, body_at, head.keep_alive


def head_fields(bytes data):
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
cdef inline bint _target_char(unsigned char c):
    return _CLASS[c] & _TARGET


# request header names clients send on every pull, handed out as one object each (their
# hash is computed once, and dictionary lookups by them compare identity first)
cdef tuple _COMMON = (b"host", b"accept", b"user-agent", b"range", b"if-range",
                      b"if-none-match", b"x-forwarded-for", b"authorization",
                      b"accept-encoding", b"connection")


cdef object _common_name(const unsigned char* p, Py_ssize_t n):
    """The common lowercase name ``p[:n]`` is (ignoring case), or None."""
    cdef bytes known
    for known in _COMMON:
        if PyBytes_GET_SIZE(known) == n and _is(p, n, known, n):
            return known
    return None


def scan_request(bytes data, Py_ssize_t max_bytes, Py_ssize_t max_url, Py_ssize_t max_fields):
    """One whole GET or HEAD request head in ``data`` of the plainest kind, or None."""
    cdef const unsigned char* p = data
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i, end, url, url_end, query = -1, line
    cdef Py_ssize_t name_end, value_start, value_end, count = 0, fields = 0, j
    cdef int kind
    cdef bint http11, keep_alive, close = False, keep = False
    cdef bytes name, value
    cdef _Field field
    cdef char* lower
    cdef unsigned char c
    cdef list headers = []
    if n < 18 or p[n - 4] != 13 or p[n - 3] != 10 or p[n - 2] != 13 or p[n - 1] != 10:
        return None
    end = n - 4
    if memcmp(p, b"GET ", 4) == 0:
        method = u"GET"
        i = 4
    elif memcmp(p, b"HEAD ", 5) == 0:
        method = u"HEAD"
        i = 5
    else:
        return None
    url = i
    if p[i] != 47:  # '/'
        return None
    while i < end and _target_char(p[i]):
        if p[i] == 63 and query < 0:  # '?'
            query = i
        i += 1
    url_end = i
    if i + 9 > end or p[i] != 32 or memcmp(p + i + 1, b"HTTP/1.", 7) != 0:
        return None
    if p[i + 8] == 49:
        http11 = True
    elif p[i + 8] == 48:
        http11 = False
    else:
        return None
    i += 9
    count = url_end - url
    if count > max_url:
        return None
    while i < end:
        i = _next_field(p, i, end, &field)
        if i < 0:
            return None
        kind = field.kind
        line, name_end = field.name, field.name_end
        value_start, value_end = field.value, field.value_end
        if kind == _LENGTH or kind == _REFUSE:
            return None  # a body, or what the parser judges
        if _is(p + line, name_end - line, b"upgrade", 7):
            return None
        if kind == _CONNECTION:
            if _is(p + value_start, value_end - value_start, b"close", 5):
                close = True
            elif _is(p + value_start, value_end - value_start, b"keep-alive", 10):
                keep = True
            else:
                return None
        fields += 1
        count += name_end - line + value_end - value_start + 4
        if fields > max_fields or count > max_bytes:
            return None
        name = _common_name(p + line, name_end - line)
        if name is None:
            name = PyBytes_FromStringAndSize(NULL, name_end - line)
            lower = PyBytes_AS_STRING(name)
            for j in range(name_end - line):
                c = p[line + j]
                lower[j] = c + 32 if c >= 65 and c <= 90 else c
        value = PyBytes_FromStringAndSize(<char*>p + value_start, value_end - value_start)
        headers.append((name, value))
    if close and keep:
        return None
    keep_alive = (http11 and not close) or (not http11 and keep)
    if query < 0:
        path = PyUnicode_DecodeLatin1(<char*>p + url, url_end - url, NULL)
        query_text = u""
    else:
        path = PyUnicode_DecodeLatin1(<char*>p + url, query - url, NULL)
        query_text = PyUnicode_DecodeLatin1(<char*>p + query + 1, url_end - query - 1, NULL)
    return method, path, query_text, headers, http11, keep_alive


def observe(list hist, tuple bounds, double value):
    """Counts ``value`` into a histogram (``metrics``: bucket counts, the +Inf one last, then
    the sum): the first bucket whose bound is not below it, as ``bisect_left`` finds it."""
    cdef Py_ssize_t i = 0, n = len(bounds)
    while i < n and <double>bounds[i] < value:
        i += 1
    hist[i] = <double>hist[i] + 1.0
    hist[n + 1] = <double>hist[n + 1] + value
