"""Zero-copy body relay: upstream socket → pipe → client socket with ``os.splice`` (Linux).

Theory of operation (DESIGN §3.4): uvloop owns the client socket through its transport and
refuses ``add_reader``/``add_writer`` on its descriptor, and the upstream connection watches its
own, so the relay works on ``os.dup()`` copies: a different descriptor number for the same
socket, which uvloop accepts (and, on stop, removes from epoll at once, so closing the dup leaves
nothing armed). While the splice runs the upstream connection does not read — nothing may read
the socket the kernel is splicing from — and the
client transport has an empty write buffer, so every byte the router wrote (the response head
and the body bytes that came with it) is on the wire before the first spliced byte.

Back-pressure both ways: the pipe is the only buffer (its size is the bound); the upstream
descriptor is watched only while the pipe has room and the client descriptor only while the
pipe holds bytes, so a client that reads nothing leaves the pipe full, the upstream socket
unread and Harbor stalled by TCP flow control. Each readiness callback moves at most
``_BUDGET`` bytes before it yields to the loop, so one fast transfer cannot starve the others.

A splice that the kernel refuses on its very first move (``EINVAL`` and friends: a socket type
or sandbox without splice) is reported as *unsupported* with the bytes it had taken, so the
caller can finish the response on the copy path; any later error ends the transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import sys
import termios
from collections.abc import Callable

AVAILABLE = hasattr(os, "splice")
PIPE_SIZE = 1024 * 1024  # the kernel's default cap for unprivileged F_SETPIPE_SZ
_BUDGET = 4 * PIPE_SIZE
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# SPLICE_F_MORE is MSG_MORE: the kernel may hold a partial segment back for what follows. The
# body's last bytes go without it, or their tail waits for the next ACK, and with nothing in
# flight for a persist-timer probe (200 ms).
_OUT_FLAGS = _FLAGS | getattr(os, "SPLICE_F_MORE", 4)
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF})

# Outcomes reported to ``on_done``.
COMPLETE, UNSUPPORTED, CLIENT_GONE, UPSTREAM_GONE = "complete", "unsupported", "client", "upstream"


def plain_fd(transport: asyncio.BaseTransport | None) -> int:
    """The descriptor of the plain TCP socket under ``transport``, else -1 (none, or TLS)."""
    if transport is None or transport.get_extra_info("sslcontext") is not None:
        return -1
    sock = transport.get_extra_info("socket")
    return -1 if sock is None else int(sock.fileno())


def unsent(fd: int) -> int:
    """Bytes in the send queue of the socket ``fd`` that its peer has not acknowledged
    (``SIOCOUTQ``); -1 when the kernel cannot tell (``fd`` -1, not a TCP socket)."""
    if fd < 0:
        return -1
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.TIOCOUTQ, bytes(4)), sys.byteorder)
    except OSError:
        return -1


class SpliceStats:
    """Counters of one forwarder (read by tests and benchmarks)."""

    __slots__ = ("bytes", "fallbacks", "responses")

    def __init__(self) -> None:
        self.responses = 0  # bodies moved entirely by splice
        self.bytes = 0  # body bytes moved by splice
        self.fallbacks = 0  # splices the kernel refused: the copy path finished them


Done = Callable[[str, "OSError | None", bytes], None]


class Splice:
    """Moves exactly ``length`` bytes from ``src`` to ``dst``; reports once through ``on_done``.

    ``on_done(outcome, error, leftover)``: ``leftover`` is what an unsupported splice had
    already taken from ``src`` (read back from the pipe) and not delivered.
    """

    __slots__ = (
        "_dst",
        "_gate",
        "_in_pipe",
        "_loop",
        "_on_done",
        "_pipe_full",
        "_pipe_r",
        "_pipe_size",
        "_pipe_w",
        "_reading",
        "_remaining",
        "_src",
        "_writing",
        "moved",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src_fd: int,
        dst_fd: int,
        length: int,
        on_done: Done,
        *,
        pipe_size: int = PIPE_SIZE,
    ) -> None:
        self._loop = loop
        self._on_done: Done | None = on_done
        self._remaining = length  # still to take from src
        self._in_pipe = 0
        self._pipe_full = False  # an EAGAIN into a non-empty pipe: wait for the client
        self._reading = self._writing = False
        self.moved = 0  # delivered to dst
        self._gate: Callable[[], bool] | None = None
        self._src = self._dst = self._pipe_r = self._pipe_w = -1
        try:
            self._src = os.dup(src_fd)
            self._dst = os.dup(dst_fd)
            self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self._close_fds()
            raise
        # Over pipe-max-size or the user's pipe quota the default size still works.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._pipe_w, fcntl.F_SETPIPE_SZ, pipe_size)
        self._pipe_size = fcntl.fcntl(self._pipe_w, fcntl.F_GETPIPE_SZ)

    @property
    def active(self) -> bool:
        return self._on_done is not None

    @property
    def in_pipe(self) -> int:
        """Bytes taken from ``src`` not yet delivered to ``dst``."""
        return self._in_pipe

    @property
    def waits_for_src(self) -> bool:
        """Nothing to deliver and past the gate: only ``src`` can make progress now."""
        return self._gate is None and self._in_pipe == 0

    def start(self, gate: Callable[[], bool] | None = None) -> None:
        """Begin moving bytes; with ``gate``, only once it returns True (checked each time
        ``dst`` is writable: used to wait until the client transport has flushed its buffer)."""
        self._gate = gate
        self._pump()

    def cancel(self) -> None:
        """Stop without reporting (the caller already knows why)."""
        self._on_done = None
        self._teardown()

    # readiness callbacks
    def _readable(self) -> None:
        self._pump()

    def _writable(self) -> None:
        self._pump()

    def _pump(self) -> None:
        if self._on_done is None:
            return
        gate = self._gate
        if gate is not None:
            if not gate():
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self._dst, self._writable)
                return
            self._gate = None
        budget = _BUDGET
        src, dst, pipe_r, pipe_w = self._src, self._dst, self._pipe_r, self._pipe_w
        splice = os.splice
        try:
            while budget > 0:
                progressed = False
                remaining = self._remaining
                room = self._pipe_size - self._in_pipe
                if remaining and room > 0 and not self._pipe_full:
                    try:
                        n = splice(src, pipe_w, min(remaining, room), flags=_FLAGS)
                    except BlockingIOError:
                        if self._in_pipe:
                            self._pipe_full = True  # or src is empty: the writer decides
                    except OSError as exc:
                        self._failed_in(exc)
                        return
                    else:
                        if n == 0:
                            self._finish(UPSTREAM_GONE, None)
                            return
                        self._remaining = remaining - n
                        self._in_pipe += n
                        progressed = True
                in_pipe = self._in_pipe
                if in_pipe:
                    try:  # "more to come" only while some of the body is still upstream
                        n = splice(
                            pipe_r, dst, in_pipe, flags=_OUT_FLAGS if self._remaining else _FLAGS
                        )
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        self._failed_out(exc)
                        return
                    else:
                        self._in_pipe = in_pipe - n
                        self.moved += n
                        budget -= n
                        self._pipe_full = False
                        progressed = True
                if not self._remaining and not self._in_pipe:
                    self._finish(COMPLETE, None)
                    return
                if not progressed:
                    break
        except BaseException:
            self._teardown()
            raise
        self._arm()

    def _arm(self) -> None:
        loop = self._loop
        want_read = bool(self._remaining) and not self._pipe_full
        if want_read != self._reading:
            self._reading = want_read
            if want_read:
                loop.add_reader(self._src, self._readable)
            else:
                loop.remove_reader(self._src)
        want_write = self._in_pipe > 0
        if want_write != self._writing:
            self._writing = want_write
            if want_write:
                loop.add_writer(self._dst, self._writable)
            else:
                loop.remove_writer(self._dst)

    def _failed_in(self, exc: OSError) -> None:
        if self.moved == 0 and self._in_pipe == 0 and exc.errno in _UNSUPPORTED:
            self._finish(UNSUPPORTED, exc)
        else:
            self._finish(UPSTREAM_GONE, exc)

    def _failed_out(self, exc: OSError) -> None:
        if self.moved == 0 and exc.errno in _UNSUPPORTED:
            leftover = b""
            try:
                while len(leftover) < self._in_pipe:
                    chunk = os.read(self._pipe_r, self._in_pipe - len(leftover))
                    if not chunk:
                        break
                    leftover += chunk
            except OSError:
                self._finish(CLIENT_GONE, exc)
                return
            self._finish(UNSUPPORTED, exc, leftover)
        else:
            self._finish(CLIENT_GONE, exc)

    def _finish(self, outcome: str, exc: OSError | None, leftover: bytes = b"") -> None:
        on_done = self._on_done
        self._on_done = None
        self._teardown()
        if on_done is not None:
            on_done(outcome, exc, leftover)

    def _teardown(self) -> None:
        # Watchers first: a descriptor must never be closed while the loop still polls it.
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._src)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._dst)
        self._close_fds()

    def _close_fds(self) -> None:
        for name in ("_src", "_dst", "_pipe_r", "_pipe_w"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)
