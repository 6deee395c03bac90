# The TTL/LRU cache and the memo as the compiled data plane knows them: _speedups/dataplane.py
# (TYPES, DECLARED_IN) has a module that imports one from ``_cache`` cimport it from here, so
# an attribute annotated with it is this type and its cpdef methods are C calls; the
# declarations are the .pyx's own.

from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint64_t

cimport cython

ctypedef struct Entry:
    PyObject* key  # NULL: a free slot
    PyObject* value
    Py_hash_t hash
    double stored_at
    double expires_at
    int32_t newer  # towards the most recently used end (the head)
    int32_t older  # towards the least recently used end (the tail); the free list's link


@cython.final
cdef class TTLCache:
    cdef Entry* _entries
    cdef int32_t* _table
    cdef size_t _mask  # table size - 1
    cdef Py_ssize_t _capacity  # slots in _entries
    cdef Py_ssize_t _used  # slots handed out since the last resize
    cdef int32_t _free  # free list of slots below _used
    cdef int32_t _head  # most recently used
    cdef int32_t _tail  # least recently used
    cdef Py_ssize_t _count
    cdef Py_ssize_t _max_entries
    cdef double _ttl
    cdef object _clock
    cdef readonly Py_ssize_t hits
    cdef readonly Py_ssize_t misses
    cdef readonly Py_ssize_t evictions
    cdef readonly Py_ssize_t expirations

    cdef inline double _now(self) except? -1.0
    cdef inline Py_ssize_t _find(self, object key, Py_hash_t h) except -2
    cdef inline size_t _position_of(self, int32_t s)
    cdef inline void _table_insert(self, int32_t s)
    cdef inline void _table_delete(self, size_t i)
    cdef inline void _unlink(self, int32_t s)
    cdef inline void _push_head(self, int32_t s)
    cdef inline void _detach(self, size_t position, PyObject** key, PyObject** value)
    cdef int _resize(self, Py_ssize_t capacity) except -1
    cdef inline int32_t _new_slot(self) except -2
    cdef inline Py_ssize_t _lookup(self, object key, double now, bint refresh) except -2

    cpdef get(self, key)
    cpdef get_timed(self, key)


ctypedef struct MemoSlot:
    PyObject* key  # NULL: an empty slot
    PyObject* value
    uint64_t hash


@cython.final
cdef class Memo:
    cdef MemoSlot* _slots
    cdef size_t _mask  # slots - 1
    cdef Py_ssize_t _count
    cdef Py_ssize_t _max_entries

    cdef inline MemoSlot* _slot(self, PyObject* key, uint64_t h) noexcept
    cdef int _grow(self) except -1

    cpdef get(self, key)
    cpdef set(self, key, value)
