# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Bounded LRU cache with a TTL per entry, and a bounded memo: the compiled twins of
``harbor_router/_cache_py.py``.

That module's docstring is the contract; this one only says how it is met.

Layout: no Python object per entry. Entries live in one C array of 48-byte structs (key and
value pointers, the key's hash, stored-at and expires-at times, and the LRU list links as
32-bit slot numbers); a second array is an open-addressing hash table (linear probing, load
factor at most 1/2, deletion by backward shift, so no tombstones) of slot numbers. Both grow
by doubling up to ``max_entries`` and shrink again after a ``purge`` or ``clear``. Keys are
exact ``str`` only, so comparing keys never runs Python code and a lookup cannot re-enter the
cache; the clock (a Python callable, when one is given) is read before the structure is
touched, and references the cache drops are released only once it is consistent again, so a
value's ``__del__`` may use the cache.

The cache holds its values from C memory the garbage collector does not see: a reference cycle
through a cached value is not collected while the entry lives (the package caches str, float
and bool only).
"""

cimport cython
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.unicode cimport PyUnicode_Compare
from libc.math cimport isnan
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from os import urandom
from types import GenericAlias

cdef extern from *:
    """
    #include <time.h>
    #ifndef CLOCK_MONOTONIC_COARSE
    #define CLOCK_MONOTONIC_COARSE CLOCK_MONOTONIC
    #endif
    static double hr_coarse_monotonic(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    """
    double hr_coarse_monotonic() nogil


MAX_ENTRIES_LIMIT = 1 << 30

cdef enum:
    NIL = -1
    MIN_CAPACITY = 8

@cython.final
cdef class TTLCache:
    # attributes: _cache_c.pxd

    def __cinit__(self):
        self._entries = NULL
        self._table = NULL
        self._mask = 0
        self._capacity = 0
        self._used = 0
        self._free = NIL
        self._head = NIL
        self._tail = NIL
        self._count = 0

    def __init__(self, Py_ssize_t max_entries, double ttl, *, clock=None):
        if not 1 <= max_entries <= MAX_ENTRIES_LIMIT:
            raise ValueError(f"max_entries must be between 1 and {MAX_ENTRIES_LIMIT}")
        if not ttl > 0:
            raise ValueError("ttl must be a positive number of seconds")
        if clock is not None and not callable(clock):
            raise TypeError("clock must be callable")
        self.clear()
        self._max_entries = max_entries
        self._ttl = ttl
        self._clock = clock

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._entries != NULL:
            for i in range(self._used):
                Py_XDECREF(self._entries[i].key)
                Py_XDECREF(self._entries[i].value)
            free(self._entries)
        free(self._table)

    def __class_getitem__(cls, item):
        return GenericAlias(cls, item)

    @property
    def max_entries(self):
        return self._max_entries

    @property
    def ttl(self):
        return self._ttl

    # -- internals ------------------------------------------------------------------------

    cdef inline double _now(self) except? -1.0:
        if self._clock is None:
            return hr_coarse_monotonic()
        return self._clock()

    cdef inline Py_ssize_t _find(self, object key, Py_hash_t h) except -2:
        """Table position holding ``key``, or -1."""
        cdef size_t i
        cdef int32_t s
        cdef Entry* e
        if self._table == NULL:
            return -1
        i = <size_t>h & self._mask
        while True:
            s = self._table[i]
            if s == NIL:
                return -1
            e = &self._entries[s]
            if e.key == <PyObject*>key or (
                e.hash == h and PyUnicode_Compare(<object>e.key, key) == 0
            ):
                return <Py_ssize_t>i
            i = (i + 1) & self._mask

    cdef inline size_t _position_of(self, int32_t s):
        """Table position of slot ``s`` (which is in the table)."""
        cdef size_t i = <size_t>self._entries[s].hash & self._mask
        while self._table[i] != s:
            i = (i + 1) & self._mask
        return i

    cdef inline void _table_insert(self, int32_t s):
        cdef size_t i = <size_t>self._entries[s].hash & self._mask
        while self._table[i] != NIL:
            i = (i + 1) & self._mask
        self._table[i] = s

    cdef inline void _table_delete(self, size_t i):
        # Backward-shift deletion: pull later members of the probe run into the hole unless
        # that would put them before their home position.
        cdef size_t j = i, k
        cdef size_t mask = self._mask
        cdef int32_t s
        self._table[i] = NIL
        while True:
            j = (j + 1) & mask
            s = self._table[j]
            if s == NIL:
                return
            k = <size_t>self._entries[s].hash & mask
            if (j > i and (k <= i or k > j)) or (j < i and k <= i and k > j):
                self._table[i] = s
                self._table[j] = NIL
                i = j

    cdef inline void _unlink(self, int32_t s):
        cdef Entry* e = &self._entries[s]
        if e.newer != NIL:
            self._entries[e.newer].older = e.older
        else:
            self._head = e.older
        if e.older != NIL:
            self._entries[e.older].newer = e.newer
        else:
            self._tail = e.newer

    cdef inline void _push_head(self, int32_t s):
        cdef Entry* e = &self._entries[s]
        e.newer = NIL
        e.older = self._head
        if self._head != NIL:
            self._entries[self._head].newer = s
        else:
            self._tail = s
        self._head = s

    cdef inline void _detach(self, size_t position, PyObject** key, PyObject** value):
        """Remove the entry at table ``position``; its references go to the caller."""
        cdef int32_t s = self._table[position]
        cdef Entry* e = &self._entries[s]
        self._table_delete(position)
        self._unlink(s)
        key[0] = e.key
        value[0] = e.value
        e.key = NULL
        e.value = NULL
        e.older = self._free
        self._free = s
        self._count -= 1

    cdef int _resize(self, Py_ssize_t capacity) except -1:
        """Reallocate for ``capacity`` entries, compacting them in LRU order."""
        cdef size_t size = MIN_CAPACITY * 2
        cdef Entry* entries
        cdef int32_t* table
        cdef int32_t s, n = 0
        while size < <size_t>capacity * 2:
            size <<= 1
        entries = <Entry*>malloc(<size_t>capacity * sizeof(Entry))
        table = <int32_t*>malloc(size * sizeof(int32_t))
        if entries == NULL or table == NULL:
            free(entries)
            free(table)
            raise MemoryError()
        memset(table, 0xFF, size * sizeof(int32_t))  # every slot NIL (-1)
        s = self._tail
        while s != NIL:
            entries[n] = self._entries[s]
            entries[n].older = n - 1
            entries[n].newer = n + 1
            s = self._entries[s].newer
            n += 1
        free(self._entries)
        free(self._table)
        self._entries = entries
        self._table = table
        self._mask = size - 1
        self._capacity = capacity
        self._used = n
        self._free = NIL
        if n:
            entries[n - 1].newer = NIL
            self._tail = 0
            self._head = n - 1
        else:
            self._tail = self._head = NIL
        for s in range(n):
            self._table_insert(s)
        return 0

    cdef inline int32_t _new_slot(self) except -2:
        cdef int32_t s
        if self._free != NIL:
            s = self._free
            self._free = self._entries[s].older
            return s
        if self._used == self._capacity:
            self._resize(min(self._max_entries, max(<Py_ssize_t>MIN_CAPACITY, self._capacity * 2)))
        s = <int32_t>self._used
        self._used += 1
        return s

    cdef inline Py_ssize_t _lookup(self, object key, double now, bint refresh) except -2:
        """Slot of the live entry for ``key`` (made most recent) or -1; counts hit or miss."""
        cdef Py_ssize_t position
        cdef int32_t s
        cdef PyObject* old_key
        cdef PyObject* old_value
        if type(key) is not str:
            raise TypeError(f"cache keys are str, not {type(key).__name__}")
        position = self._find(key, hash(key))
        if position < 0:
            self.misses += 1
            return -1
        s = self._table[position]
        if now > self._entries[s].expires_at:
            self._detach(position, &old_key, &old_value)
            self.expirations += 1
            self.misses += 1
            Py_XDECREF(old_key)
            Py_XDECREF(old_value)
            return -1
        self.hits += 1
        if refresh and self._head != s:
            self._unlink(s)
            self._push_head(s)
        return s

    # -- API ------------------------------------------------------------------------------

    def now(self):
        """The cache's clock: monotonic seconds."""
        return self._now()

    cpdef get(self, key):
        """The live value for ``key`` (now the most recently used), or None."""
        cdef double now = self._now()
        cdef Py_ssize_t s = self._lookup(key, now, True)
        if s < 0:
            return None
        return <object>self._entries[s].value

    cpdef get_timed(self, key):
        """``(value, now)``: :meth:`get`'s value and the clock reading it was judged live by,
        or None."""
        cdef double now = self._now()
        cdef Py_ssize_t s = self._lookup(key, now, True)
        if s < 0:
            return None
        return (<object>self._entries[s].value, now)

    def get_entry(self, key):
        """``(value, stored_at)`` of the live entry for ``key`` (now most recent), or None."""
        cdef double now = self._now()
        cdef Py_ssize_t s = self._lookup(key, now, True)
        cdef object value
        cdef double stored_at
        if s < 0:
            return None
        # Read before allocating the tuple: a collection it triggers may run code that uses us.
        value = <object>self._entries[s].value
        stored_at = self._entries[s].stored_at
        return (value, stored_at)

    def set(self, key, value, ttl=None):
        """Store ``value`` for ``ttl`` seconds (default: the cache's); ``ttl <= 0`` deletes."""
        cdef double lifetime, now
        cdef Py_hash_t h
        cdef Py_ssize_t position
        cdef int32_t s
        cdef Entry* e
        cdef PyObject* old_key = NULL
        cdef PyObject* old_value = NULL
        if type(key) is not str:
            raise TypeError(f"cache keys are str, not {type(key).__name__}")
        if ttl is None:
            lifetime = self._ttl
        else:
            lifetime = ttl
            if isnan(lifetime):
                raise ValueError("ttl must be a number of seconds, not NaN")
        now = self._now()
        h = hash(key)
        position = self._find(key, h)
        if lifetime <= 0:
            if position >= 0:
                self._detach(position, &old_key, &old_value)
        elif position >= 0:
            s = self._table[position]
            e = &self._entries[s]
            old_value = e.value
            Py_INCREF(value)
            e.value = <PyObject*>value
            e.stored_at = now
            e.expires_at = now + lifetime
            if self._head != s:
                self._unlink(s)
                self._push_head(s)
        else:
            if self._count >= self._max_entries:
                s = self._tail
                if now > self._entries[s].expires_at:
                    self.expirations += 1
                else:
                    self.evictions += 1
                self._detach(self._position_of(s), &old_key, &old_value)
            s = self._new_slot()
            e = &self._entries[s]
            Py_INCREF(key)
            Py_INCREF(value)
            e.key = <PyObject*>key
            e.value = <PyObject*>value
            e.hash = h
            e.stored_at = now
            e.expires_at = now + lifetime
            self._table_insert(s)
            self._push_head(s)
            self._count += 1
        Py_XDECREF(old_key)
        Py_XDECREF(old_value)

    def delete(self, key):
        """Remove ``key``; True if a live entry was removed."""
        cdef double now = self._now()
        cdef Py_ssize_t position
        cdef bint live
        cdef PyObject* old_key
        cdef PyObject* old_value
        if type(key) is not str:
            raise TypeError(f"cache keys are str, not {type(key).__name__}")
        position = self._find(key, hash(key))
        if position < 0:
            return False
        live = now <= self._entries[self._table[position]].expires_at
        if not live:
            self.expirations += 1
        self._detach(position, &old_key, &old_value)
        Py_XDECREF(old_key)
        Py_XDECREF(old_value)
        return live

    def purge(self):
        """Remove every expired entry now; the number removed. O(n): housekeeping only."""
        cdef double now = self._now()
        cdef int32_t s, newer
        cdef PyObject* old_key
        cdef PyObject* old_value
        cdef list garbage = []
        s = self._tail
        while s != NIL:
            newer = self._entries[s].newer
            if now > self._entries[s].expires_at:
                self._detach(self._position_of(s), &old_key, &old_value)
                # The list takes over the references; they go once the cache is consistent.
                garbage.append(<object>old_key)
                garbage.append(<object>old_value)
                Py_XDECREF(old_key)
                Py_XDECREF(old_value)
            s = newer
        self.expirations += len(garbage) // 2
        if self._capacity > MIN_CAPACITY and self._count * 4 < self._capacity:
            self._resize(max(<Py_ssize_t>MIN_CAPACITY, self._count * 2))
        return len(garbage) // 2

    def clear(self):
        """Drop every entry (counters stay)."""
        cdef Entry* entries = self._entries
        cdef Py_ssize_t i, used = self._used
        free(self._table)
        self._entries = NULL
        self._table = NULL
        self._mask = 0
        self._capacity = 0
        self._used = 0
        self._free = NIL
        self._head = NIL
        self._tail = NIL
        self._count = 0
        if entries != NULL:
            for i in range(used):
                Py_XDECREF(entries[i].key)
                Py_XDECREF(entries[i].value)
            free(entries)

    def keys(self):
        """Stored keys, least recently used first (may include expired ones)."""
        cdef list keys = []
        cdef int32_t s = self._tail
        while s != NIL:
            keys.append(<object>self._entries[s].key)
            s = self._entries[s].newer
        return keys

    def __len__(self):
        return self._count

    def __contains__(self, key):
        cdef double now = self._now()
        cdef Py_ssize_t position
        if type(key) is not str:
            return False
        position = self._find(key, hash(key))
        return position >= 0 and now <= self._entries[self._table[position]].expires_at

    def __repr__(self):
        return (
            f"<TTLCache {self._count}/{self._max_entries} ttl={self._ttl}"
            f" hits={self.hits} misses={self.misses}>"
        )


# -- Memo -----------------------------------------------------------------------------------

cdef extern from *:
    """
    #include <string.h>
    /* The memo's hash of a str's bytes: a word at a time, seeded per process (the keys are
       request targets, chosen by clients; a run of colliding keys only goes unmemoized). */
    static uint64_t hr_memo_seed = 0x9E3779B97F4A7C15ULL;
    static inline uint64_t hr_memo_hash(PyObject *key) {
        const unsigned char *p = (const unsigned char *)PyUnicode_DATA(key);
        size_t n = (size_t)PyUnicode_GET_LENGTH(key) * PyUnicode_KIND(key), len = n;
        uint64_t h = hr_memo_seed ^ ((uint64_t)n * 0xD6E8FEB86659FD93ULL), w = 0;
        uint32_t a, b;
        while (n > 8) {
            memcpy(&w, p, 8);
            h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
            h ^= h >> 31;
            p += 8;
            n -= 8;
        }
        if (len >= 8) {  /* the last eight bytes, overlapping the words before */
            memcpy(&w, p + n - 8, 8);
        } else if (n >= 4) {
            memcpy(&a, p, 4);
            memcpy(&b, p + n - 4, 4);
            w = ((uint64_t)a << 32) | b;
        } else if (n) {
            w = (uint64_t)p[0] | ((uint64_t)p[n / 2] << 8) | ((uint64_t)p[n - 1] << 16);
        }
        h = (h ^ w) * 0x94D049BB133111EBULL;
        h ^= h >> 32;
        h *= 0xD6E8FEB86659FD93ULL;
        return h ^ (h >> 32);
    }
    /* Equal str: the same length, kind and bytes (a str's kind is the least that holds it). */
    static inline int hr_same_str(PyObject *a, PyObject *b) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(b);
        return a == b || (PyUnicode_GET_LENGTH(a) == n && PyUnicode_KIND(a) == PyUnicode_KIND(b)
                          && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b),
                                    (size_t)n * PyUnicode_KIND(b)) == 0);
    }
    """
    uint64_t hr_memo_seed
    uint64_t hr_memo_hash(PyObject* key) noexcept nogil
    bint hr_same_str(PyObject* a, PyObject* b) noexcept nogil

hr_memo_seed = int.from_bytes(urandom(8), "little")

cdef enum:
    MEMO_PROBES = 32  # a key not found within this many slots of its own is not memoized
    MEMO_MIN_SLOTS = 16


cdef void _release(MemoSlot* slots, size_t size) noexcept:
    """Drop the references ``slots`` hold, then the array (NULL: nothing)."""
    cdef size_t i
    if slots == NULL:
        return
    for i in range(size):
        Py_XDECREF(slots[i].key)
        Py_XDECREF(slots[i].value)
    free(slots)


@cython.final
cdef class Memo:
    """Bounded ``str`` → value memo: the compiled twin of ``_cache_py.Memo`` (that module's
    docstring is the contract).

    Layout: one C array of slots (key, value, the key's hash), open addressing with linear
    probing, at most half full, grown by doubling up to ``2 * max_entries`` slots and dropped
    by ``clear``. The hash is a seeded word-at-a-time one, not ``str``'s (whose SipHash a
    lookup would pay for every fresh key); a key whose first ``MEMO_PROBES`` slots are taken
    is simply not kept. Values are held from C memory the garbage collector does not see."""

    def __cinit__(self):
        self._slots = NULL
        self._mask = 0
        self._count = 0

    def __init__(self, Py_ssize_t max_entries):
        if not 1 <= max_entries <= MAX_ENTRIES_LIMIT:
            raise ValueError(f"max_entries must be between 1 and {MAX_ENTRIES_LIMIT}")
        self.clear()
        self._max_entries = max_entries

    def __dealloc__(self):
        _release(self._slots, self._mask + 1)

    def __class_getitem__(cls, item):
        return GenericAlias(cls, item)

    @property
    def max_entries(self):
        return self._max_entries

    cdef inline MemoSlot* _slot(self, PyObject* key, uint64_t h) noexcept:
        """The slot holding ``key``, else the empty one it would go in; NULL when neither is
        within ``MEMO_PROBES`` of its own (or there are no slots)."""
        cdef size_t i, probe
        cdef MemoSlot* slot
        if self._slots == NULL:
            return NULL
        i = <size_t>h & self._mask
        for probe in range(MEMO_PROBES):
            slot = &self._slots[i]
            if slot.key == NULL or (slot.hash == h and hr_same_str(slot.key, key)):
                return slot
            i = (i + 1) & self._mask
        return NULL

    cdef int _grow(self) except -1:
        """Twice the slots (the first ones: ``MEMO_MIN_SLOTS``), every entry moved over."""
        cdef size_t old_size = self._mask + 1 if self._slots != NULL else 0
        cdef size_t size = old_size * 2 if old_size else MEMO_MIN_SLOTS
        cdef MemoSlot* old = self._slots
        cdef MemoSlot* slots = <MemoSlot*>calloc(size, sizeof(MemoSlot))
        cdef size_t i, j
        if slots == NULL:
            raise MemoryError()
        for i in range(old_size):
            if old[i].key != NULL:
                j = <size_t>old[i].hash & (size - 1)
                while slots[j].key != NULL:
                    j = (j + 1) & (size - 1)
                slots[j] = old[i]
        self._slots = slots
        self._mask = size - 1
        free(old)
        return 0

    cpdef get(self, key):
        """The value last set for ``key``, or None."""
        cdef MemoSlot* slot
        if type(key) is not str:
            raise TypeError(f"memo keys are str, not {type(key).__name__}")
        slot = self._slot(<PyObject*>key, hr_memo_hash(<PyObject*>key))
        if slot == NULL or slot.key == NULL:
            return None
        return <object>slot.value

    cpdef set(self, key, value):
        """Keep ``value`` for ``key``; a new key into a full memo empties it first."""
        cdef uint64_t h
        cdef MemoSlot* slot
        cdef PyObject* old
        if type(key) is not str:
            raise TypeError(f"memo keys are str, not {type(key).__name__}")
        if value is None:
            raise TypeError("a memo's values are not None")
        h = hr_memo_hash(<PyObject*>key)
        slot = self._slot(<PyObject*>key, h)
        if slot != NULL and slot.key != NULL:
            old = slot.value
            Py_INCREF(value)
            slot.value = <PyObject*>value
            Py_XDECREF(old)  # the memo is consistent again: a __del__ may use it
            return
        if self._count >= self._max_entries:
            self.clear()
        if self._slots == NULL or <size_t>(self._count + 1) * 2 > self._mask + 1:
            if self._slots == NULL or self._mask + 1 < <size_t>self._max_entries * 2:
                self._grow()
        slot = self._slot(<PyObject*>key, h)
        if slot == NULL:
            return  # its run of slots is full: not kept
        Py_INCREF(key)
        Py_INCREF(value)
        slot.key = <PyObject*>key
        slot.value = <PyObject*>value
        slot.hash = h
        self._count += 1

    def clear(self):
        """Forget every entry."""
        cdef MemoSlot* slots = self._slots
        cdef size_t size = self._mask + 1
        self._slots = NULL
        self._mask = 0
        self._count = 0
        _release(slots, size)  # the memo is empty already: a __del__ may use it

    def __len__(self):
        return self._count

    def __repr__(self):
        return f"<Memo {self._count}/{self._max_entries}>"
