# The functions of _wire_c.pyx that the compiled data plane calls in C: _speedups/dataplane.py
# (FUNCTIONS, DECLARED_IN) has the modules that import one of them from ``_wire`` cimport it
# from here instead; the declarations are the .pyx's own (and those of the types they take).

cdef class RequestTable:
    cdef readonly tuple methods
    cdef Py_ssize_t nkinds, nclasses, nbounds
    cdef double *bounds
    cdef double **cells  # [method][kind][class] → a histogram, NULL until counted into
    cdef long long *sent_bytes  # by kind

cdef class ProjectCalls:
    cdef long long *counts  # by UpstreamTable slot
    cdef double *duration
    cdef dict extra  # label → count, of labels with no slot

cdef class UpstreamTable:
    cdef dict projects  # project → ProjectCalls
    cdef object last_project  # and its record: the one looked up last
    cdef ProjectCalls last_calls
    cdef dict slots  # status label → slot
    cdef tuple labels  # slot → status label
    cdef int status_slot[1000]  # status → slot
    cdef Py_ssize_t nbounds
    cdef double *bounds
    cdef ProjectCalls calls(self, str project)

# what scan_response / scan_request read, into an object the caller keeps: the compiled callers
# read its fields as C values, without a tuple (or an int object) made for them
cdef class ResponseScan:
    cdef readonly int status
    cdef readonly bytes block
    cdef readonly Py_ssize_t body_at
    cdef readonly bint keep_alive

cdef class RequestScan:
    cdef readonly str method, path, query
    cdef readonly list headers
    cdef readonly bint http11, keep_alive

cdef class ForwardLines:
    cdef tuple known  # by the index of each name _KNOWN has: its line start, or None
    cdef dict others  # the other names' line starts

cpdef valid_name(str name)
cpdef valid_tag(str tag)
cpdef valid_digest(str digest)
cpdef end_to_end(list headers, bytes needle, bytes replacement)
cpdef build_head(bytes status_line, headers, bytes extra, long content_length, bint close)
cpdef whole_response(bytes status_line, bytes block, bytes added, bint close, bytes data, Py_ssize_t body_at)
cpdef renamed_tag_response(bytes status_line, bytes block, bytes added, bint close, bytes data, Py_ssize_t body_at, str name)
cpdef bint scan_response(bytes data, bint head_only, ResponseScan scan) except -1
cpdef head_fields(bytes data)
cpdef bint scan_request(bytes data, Py_ssize_t max_bytes, Py_ssize_t max_url, Py_ssize_t max_fields, RequestScan scan) except -1
cpdef forward_head(str method, bytes start, list headers, ForwardLines lines, str client_ip)
cpdef observe(list hist, tuple bounds, double value)
cpdef bint write_to(transport, int fd, bint queued, bytes data) except -1
cpdef read_from(int fd)
cpdef Py_ssize_t send_to(int fd, bytes data, Py_ssize_t start) except -2
cpdef count_request(RequestTable table, str method, long kind, long status, double duration, long long sent)
cpdef count_upstream(UpstreamTable table, str project, str label, double duration)
cpdef count_answer(UpstreamTable table, str project, long status, double duration)
cpdef double perf_counter() except? -1.0
