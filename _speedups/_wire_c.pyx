# cython: language_level=3, boundscheck=False, wraparound=False
"""Per-request byte work of the data plane: the compiled twin of ``harbor_router/_wire_py.py``.

Same functions, same results (the twin is the specification; the tests run both): name, tag
and digest validation as typed character loops instead of regular expressions; header
rewriting and head joining with fewer temporary objects.
"""

from cpython.bytes cimport PyBytes_GET_SIZE

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
