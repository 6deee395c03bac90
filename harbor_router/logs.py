"""Logging: ``LOG_FORMAT=pretty|json``, ``LOG_LEVEL``, structured events and the access log.

Structured fields travel on a record as ``extra={"fields": {...}}`` (see :func:`event`): the
JSON formatter writes them as members of the line's object, the pretty one as ``key=value``
after the message. Every event carries an ``event`` field (``access``, ``resolve``,
``discovery``, ``breaker``, ``redis``, ``rate_limit``).

The access log (logger ``harbor_router.access``, INFO) is off the request's critical section:
the protocol's boundary appends one tuple to :class:`AccessLog`'s buffer, and a timer every
:data:`FLUSH_INTERVAL` formats the buffered lines and writes them in one batch (the handler
flushes its stream once per batch, not once per line). With the access logger not enabled for
INFO at start-up, the protocol gets no :class:`AccessLog` at all and pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final, TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

ACCESS_LOGGER: Final = "harbor_router.access"
FLUSH_INTERVAL: Final = 0.05
#: Buffered access lines beyond this are dropped (and counted) until the next flush.
MAX_BUFFERED: Final = 100_000
MAX_PATH: Final = 256

_ESCAPES: Final = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F, *range(0x80, 0x100))}
_ESCAPES[ord("\\")] = "\\\\"


def escape(text: str, limit: int = MAX_PATH) -> str:
    """Control characters, backslash and non-ASCII as ``\\xNN``; at most ``limit`` characters
    of the input (a cut one ends with ``...``)."""
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not (text.isascii() and text.isprintable() and "\\" not in text):
        text = text.translate(_ESCAPES)
    return text + "..." if cut else text


def event(kind: str, /, **fields: object) -> dict[str, Any]:
    """``extra=`` for a structured log call: ``log.info("...", extra=event("breaker", ...))``."""
    return {"fields": {"event": kind, **fields}}


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PrettyFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping) and fields:
            pairs = " ".join(f"{k}={_pretty_value(v)}" for k, v in fields.items())
            first, sep, rest = text.partition("\n")  # keep a traceback after the fields
            text = f"{first} {pairs}{sep}{rest}"
        return text


def _pretty_value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=') or not text.isprintable():
        return json.dumps(text)
    return text


class BatchingHandler(logging.StreamHandler[TextIO]):
    """A stream handler that flushes once per :func:`batch` instead of once per record."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.batching = False

    def flush(self) -> None:
        if not self.batching:
            super().flush()


@contextlib.contextmanager
def batch(logger: logging.Logger) -> Iterator[None]:
    """Records emitted inside reach the stream with one flush at the end."""
    handlers = [h for h in _handlers(logger) if isinstance(h, BatchingHandler)]
    for handler in handlers:
        handler.batching = True
    try:
        yield
    finally:
        for handler in handlers:
            handler.batching = False
            handler.flush()


def _handlers(logger: logging.Logger) -> Iterator[logging.Handler]:
    current: logging.Logger | None = logger
    while current is not None:
        yield from current.handlers
        current = current.parent if current.propagate else None


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    if stream is None:  # block-buffered on stderr's descriptor: a batch is one write
        stream = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(sys.stderr.fileno(), "w", closefd=False), 1 << 16),
            encoding="utf-8",
            errors="backslashreplace",
            write_through=False,
        )
    handler = BatchingHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PrettyFormatter())
    root = logging.getLogger("harbor_router")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    root.propagate = False


def _fast_lines(
    entries: list[AccessEntry], name: str, formatter: logging.Formatter | None
) -> str | None:
    """The access lines as the formatter would write them, or None for another formatter."""
    out = []
    stamps: dict[int, str] = {}  # one strftime per second of the batch
    if type(formatter) is JsonFormatter:
        for ts, method, path, status, rtype, seconds, client, project, cache, sent in entries:
            safe = escape(path)
            second = int(ts)
            stamp = stamps.get(second)
            if stamp is None:
                stamp = stamps[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
            out.append(json.dumps({
                "ts": f"{stamp}.{int((ts - second) * 1000):03d}Z",
                "level": "info", "logger": name, "msg": f"{method} {safe} {status}",
                "event": "access", "method": method, "path": safe, "status": status,
                "type": rtype, "duration_ms": round(seconds * 1000.0, 3), "client": client,
                "project": project, "cache": cache, "bytes": sent,
            }))  # fmt: skip
    elif type(formatter) is PrettyFormatter:
        for ts, method, path, status, rtype, seconds, client, project, cache, sent in entries:
            safe = escape(path)
            second = int(ts)
            stamp = stamps.get(second)
            if stamp is None:
                stamp = stamps[second] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
            fields = (
                ("event", "access"), ("method", method), ("path", safe), ("status", status),
                ("type", rtype), ("duration_ms", round(seconds * 1000.0, 3)),
                ("client", client), ("project", project), ("cache", cache), ("bytes", sent),
            )  # fmt: skip
            pairs = " ".join(f"{k}={_pretty_value(v)}" for k, v in fields)
            out.append(
                f"{stamp},{int((ts - int(ts)) * 1000):03d} INFO    {name}: "
                f"{method} {safe} {status} {pairs}"
            )
    else:
        return None
    out.append("")
    return "\n".join(out)


# One access line: (wall time, method, path, status, type, seconds, client, project, cache,
# bytes).
AccessEntry = tuple[float, str, str, int, str, float, str, str, str, int]


class AccessLog:
    """The buffer between the request boundary and the access logger."""

    __slots__ = ("_buffer", "_handle", "_logger", "dropped")

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._buffer: list[AccessEntry] = []
        self._handle: asyncio.TimerHandle | None = None
        self.dropped = 0

    @classmethod
    def if_enabled(cls) -> AccessLog | None:
        """An access log when ``harbor_router.access`` logs INFO now, else None."""
        logger = logging.getLogger(ACCESS_LOGGER)
        return cls(logger) if logger.isEnabledFor(logging.INFO) else None

    def append(self, entry: AccessEntry) -> None:
        buffer = self._buffer
        if len(buffer) >= MAX_BUFFERED:
            self.dropped += 1
            return
        buffer.append(entry)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        self._handle = None
        entries, self._buffer = self._buffer, []
        logger = self._logger
        if not entries:
            return
        handlers = [h for h in _handlers(logger) if type(h) is BatchingHandler]
        if handlers and len(handlers) == len(list(_handlers(logger))):
            # The router's own handlers: format the lines here, one write per batch, instead of
            # a LogRecord per line (the formatters' output, byte for byte).
            for handler in handlers:
                lines = _fast_lines(entries, logger.name, handler.formatter)
                if lines is None:
                    break
                with handler.lock or contextlib.nullcontext():
                    handler.stream.write(lines)
                    handler.stream.flush()
            else:
                return
        with batch(logger):
            for ts, method, path, status, rtype, seconds, client, project, cache, sent in entries:
                safe = escape(path)
                record = logger.makeRecord(
                    logger.name,
                    logging.INFO,
                    "(access)",
                    0,
                    "%s %s %d",
                    (method, safe, status),
                    None,
                    extra={
                        "fields": {
                            "event": "access",
                            "method": method,
                            "path": safe,
                            "status": status,
                            "type": rtype,
                            "duration_ms": round(seconds * 1000.0, 3),
                            "client": client,
                            "project": project,
                            "cache": cache,
                            "bytes": sent,
                        }
                    },
                )
                record.created = ts
                record.msecs = (ts - int(ts)) * 1000.0
                logger.handle(record)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.flush()
