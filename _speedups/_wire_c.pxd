# The functions of _wire_c.pyx that the compiled data plane calls in C: _speedups/dataplane.py
# (FUNCTIONS, DECLARED_IN) has the modules that import one of them from ``_wire`` cimport it
# from here instead; the declarations are the .pyx's own (and those of forward_head's table).
cdef class ForwardLines:
    cdef tuple known  # by the index of each name _KNOWN has: its line start, or None
    cdef dict others  # the other names' line starts

cpdef valid_name(str name)
cpdef valid_tag(str tag)
cpdef valid_digest(str digest)
cpdef end_to_end(list headers, bytes needle, bytes replacement)
cpdef build_head(bytes status_line, headers, bytes extra, long content_length, bint close)
cpdef scan_response(bytes data, bint head_only)
cpdef head_fields(bytes data)
cpdef scan_request(bytes data, Py_ssize_t max_bytes, Py_ssize_t max_url, Py_ssize_t max_fields)
cpdef forward_head(str method, bytes start, list headers, ForwardLines lines, str client_ip)
cpdef observe(list hist, tuple bounds, double value)
cpdef monotonic()
