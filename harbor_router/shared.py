"""The shared tier: mappings, negative entries, projects and hot names in Redis via Sentinel.

Theory of operation (DESIGN §3.1, §4). Redis is an *optional* second tier between the
in-process L1 cache and a fan-out. Being optional means a Redis outage must cost a request at
most one ``REDIS_TIMEOUT`` and never an error, so the store is a small state machine:

    connecting ──PING ok──▶ up ──any connection error / timeout──▶ down ──PING ok──▶ up
        └────────PING fails────────────────────────────────────────▶ down

* **up**: every call runs under ``asyncio.timeout(REDIS_TIMEOUT)`` (the sockets have the same
  timeout, and redis-py's own retries are off, so nothing waits longer). The first connection
  error, timeout or ``READONLY`` answer switches the store to *down*.
* **down** (and *connecting*): every call returns at once — ``None``, ``False`` or nothing —
  without touching the network; callers use L1 only. One background task PINGs the master
  (through Sentinel, so it finds a promoted replica) with exponential backoff up to
  ``max_backoff`` and switches back to *up* when a PING succeeds.
* Each transition is logged once: a warning with the reason going down, info coming back.
  Never one line per request. Calls that were already in flight when the store went down (or
  that started before it came back) do not cause a second transition: each call remembers the
  generation it started in.

Sentinel failover (master killed): connections to the old master fail, the store goes down,
and the recovery PING asks the Sentinels for the master again — redis-py's
``SentinelConnectionPool`` re-discovers on every new connection and drops idle connections to
an old address; a demoted master's ``READONLY`` answer is turned into a ``ConnectionError``
by redis-py and disconnects. Until the Sentinels have promoted a replica, the PING fails and
the store stays down, so reads miss and writes are dropped: no request ever fails because of it.

Time base: Redis holds wall-clock epoch seconds (``time.time()``), because the pods' monotonic
clocks have nothing in common; L1 uses ``time.monotonic()``. :func:`wall_to_monotonic` and
:func:`monotonic_to_wall` convert, clamping an age that comes out negative (clock skew
between pods) to 0. The Redis key TTL (``PX``) is computed from the stored-at time, not from
"now", so an entry never outlives ``CACHE_TTL + STALE_WHILE_REVALIDATE`` after it was resolved.

Authentication: ``password`` goes to the master (``AUTH`` on every new connection). Sentinels
are separate servers with their own ``requirepass``; they get the same password only with
``sentinel_auth`` (``REDIS_SENTINEL_AUTH``). The password never appears in a log line, an
error or ``repr()``: it is held in :class:`_Secret` and every reason text is scrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff

from .config import MASK, format_duration
from .logs import event

if TYPE_CHECKING:
    from .config import Config

__all__ = [
    "DOWN",
    "UP",
    "SharedStore",
    "monotonic_to_wall",
    "wall_to_monotonic",
]

log = logging.getLogger("harbor_router.shared")

T = TypeVar("T")

CONNECTING: Final = "connecting"
UP: Final = "up"
DOWN: Final = "down"

INITIAL_BACKOFF = 0.1
MAX_BACKOFF = 5.0
#: One background reconnect attempt: Sentinel query + connect + AUTH + PING.
PROBE_TIMEOUT = 2.0
HOT_MAX = 1000
HOT_FLUSH_INTERVAL = 5.0
HOT_HALF_LIFE = 6 * 3600.0
#: Distinct names counted locally between two flushes; further new names wait for the next.
HOT_PENDING_MAX = 10_000
#: Background writes (hot-set flush) are not on a request's path; they may take longer.
BACKGROUND_TIMEOUT = 1.0

# Errors that mean "Redis is not usable right now" (switch to down), as opposed to an error
# in one command (a wrong type under a key): counted and logged once, the store stays up.
# ReadOnlyError: we still talk to a demoted master. AuthenticationError, BusyLoadingError and
# MasterNotFoundError are ConnectionErrors.
_OUTAGE: Final = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    OSError,
    TimeoutError,
)
_AUTH_MARKERS: Final = ("WRONGPASS", "NOAUTH", "invalid password", "Authentication", "AUTH ")

# Delete a mapping only while it still points at the given project.
_DELETE_IF_PROJECT: Final = """
local value = redis.call('GET', KEYS[1])
if value then
  local ok, entry = pcall(cjson.decode, value)
  if ok and type(entry) == 'table' and entry['project'] == ARGV[1] then
    return redis.call('DEL', KEYS[1])
  end
end
return 0
"""

# Halve every hot score, at most once per half-life across all pods (the marker key is shared),
# so names that were popular long ago make room for the ones popular now.
_DECAY_HOT: Final = """
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  local items = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #items, 2 do
    redis.call('ZADD', KEYS[1], tonumber(items[i + 1]) / 2, items[i])
  end
  return 1
end
return 0
"""


def wall_to_monotonic(
    stored_at: float, *, wall: float | None = None, monotonic: float | None = None
) -> float:
    """The ``time.monotonic()`` reading that matches the wall-clock ``stored_at``.

    An entry stored "in the future" (another pod's clock is ahead) counts as stored now.
    """
    wall = time.time() if wall is None else wall
    monotonic = time.monotonic() if monotonic is None else monotonic
    return monotonic - max(0.0, wall - stored_at)


def monotonic_to_wall(
    stored_at: float, *, wall: float | None = None, monotonic: float | None = None
) -> float:
    """The wall-clock epoch seconds that match the ``time.monotonic()`` reading ``stored_at``."""
    wall = time.time() if wall is None else wall
    monotonic = time.monotonic() if monotonic is None else monotonic
    return wall - max(0.0, monotonic - stored_at)


class _Secret:
    """A password that does not show itself."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return MASK if self.value else "''"

    __str__ = __repr__


class SharedStore:
    """The Redis tier: one instance per process, ``start()`` once, ``await close()`` at the end.

    Every coroutine method returns within ``timeout`` (+ scheduling) and never raises for a
    Redis problem; read methods return ``None`` when Redis is down or slow.
    """

    def __init__(
        self,
        sentinels: Sequence[tuple[str, int]],
        *,
        master_name: str = "mymaster",
        password: str = "",
        sentinel_auth: bool = False,
        db: int = 0,
        prefix: str = "hr",
        timeout: float = 0.1,
        warm_start_timeout: float = 0.5,
        mapping_ttl: float = 360.0,
        negative_ttl: float = 30.0,
        hot_max: int = HOT_MAX,
        hot_flush_interval: float = HOT_FLUSH_INTERVAL,
        hot_half_life: float = HOT_HALF_LIFE,
        max_backoff: float = MAX_BACKOFF,
        probe_timeout: float = PROBE_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not sentinels:
            raise ValueError("at least one Sentinel address is needed")
        self.sentinels = tuple((str(host), int(port)) for host, port in sentinels)
        self.master_name = master_name
        self._password = _Secret(password)
        self._sentinel_auth = sentinel_auth
        self.db = db
        self.prefix = prefix
        self.timeout = timeout
        self.warm_start_timeout = warm_start_timeout
        self.mapping_ttl = mapping_ttl
        self.negative_ttl = negative_ttl
        self.hot_max = hot_max
        self.hot_flush_interval = hot_flush_interval
        self.hot_half_life = hot_half_life
        self.max_backoff = max_backoff
        self.probe_timeout = probe_timeout
        self._clock = clock
        self._projects_key = f"{prefix}:projects"
        self._hot_key = f"{prefix}:hot"
        self._hot_decay_key = f"{prefix}:hot:decay"

        self._sentinel: Sentinel | None = None
        self._client: Redis | None = None
        self._state: str = CONNECTING
        self._generation = 0
        self._recovery: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._decided: asyncio.Event | None = None  # set once the first probe has an outcome
        self._pending_hot: dict[str, int] = {}
        self._last_error: str | None = None
        self._closed = False

        #: ``(operation, result)`` → count; results: ``ok``, ``hit``, ``miss``, ``error``,
        #: ``timeout``, ``skipped`` (not attempted: the store was down).
        self.operations: Counter[tuple[str, str]] = Counter()
        #: Calls answered without Redis because the store was not up.
        self.fallbacks = 0
        #: Transitions to down (outages) and back up (reconnections; the first connect is not one).
        self.outages = 0
        self.reconnections = 0
        #: The reason of the last transition to down (scrubbed), for health output.
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> SharedStore | None:
        """The store for ``config``, or None when ``REDIS_SENTINELS`` is unset (no Redis)."""
        if not config.redis_sentinels:
            return None
        return cls(
            [(a.host, a.port) for a in config.redis_sentinels],
            master_name=config.redis_master_name,
            password=config.redis_password,
            sentinel_auth=config.redis_sentinel_auth,
            db=config.redis_db,
            prefix=config.redis_key_prefix,
            timeout=config.redis_timeout,
            warm_start_timeout=config.redis_warm_start_timeout,
            mapping_ttl=config.cache_ttl + config.stale_while_revalidate,
            negative_ttl=config.negative_cache_ttl,
        )

    def __repr__(self) -> str:
        sentinels = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return (
            f"<SharedStore {self.master_name}@[{sentinels}] db={self.db} "
            f"prefix={self.prefix!r} state={self._state}>"
        )

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``connecting``, ``up`` or ``down``."""
        return self._state

    @property
    def available(self) -> bool:
        """True while calls go to Redis; False means callers get L1-only answers."""
        return self._state == UP

    def start(self) -> None:
        """Create the clients and start connecting in the background; never waits on Redis."""
        if self._client is not None:
            return
        no_retry = Retry(NoBackoff(), 0)
        password = self._password.value or None
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "retry": no_retry,
        }
        if self._sentinel_auth and password:
            sentinel_kwargs["password"] = password
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(self.sentinels),
            sentinel_kwargs=sentinel_kwargs,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=no_retry,
            password=password,
            db=self.db,
        )
        self._client = self._sentinel.master_for(self.master_name, decode_responses=True)
        self._decided = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._recovery = loop.create_task(self._recover())
        self._flusher = loop.create_task(self._flush_loop())

    async def close(self) -> None:
        """Stop the background tasks, flush pending hot counts (bounded), close connections."""
        if self._closed:
            return
        self._closed = True
        for task in (self._recovery, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._recovery = self._flusher = None
        await self.flush_hot()
        for closer in (self._client, self._sentinel):
            if closer is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.timeout):
                        await closer.aclose()
        self._state = DOWN

    # -- the state machine --------------------------------------------------------------------

    def _reason(self, exc: BaseException, timeout: float) -> str:
        if isinstance(exc, TimeoutError | redis_errors.TimeoutError):
            text = f"no answer within {format_duration(timeout)}"
        else:
            message = str(exc) or type(exc).__name__
            if isinstance(exc, redis_errors.AuthenticationError) or any(
                marker.lower() in message.lower() for marker in _AUTH_MARKERS
            ):
                hint = "REDIS_PASSWORD / REDIS_PASSWORD_FILE"
                if isinstance(exc, MasterNotFoundError):
                    hint += " and REDIS_SENTINEL_AUTH"
                text = f"authentication failed (check {hint}): {message}"
            elif isinstance(exc, MasterNotFoundError):
                text = f"no Sentinel gave a master for {self.master_name!r}: {message}"
            elif isinstance(exc, redis_errors.ReadOnlyError):
                text = f"the master became a read-only replica: {message}"
            else:
                text = f"{type(exc).__name__}: {message}"
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        secret = self._password.value
        return text.replace(secret, MASK) if secret else text

    def _went_down(self, generation: int, reason: str) -> None:
        if self._state != UP or generation != self._generation or self._closed:
            return
        self._state = DOWN
        self._generation += 1
        self.outages += 1
        self.last_error = reason
        log.warning(
            "Redis unavailable, using the in-process cache only: %s",
            reason,
            extra=event("redis", state=DOWN, reason=reason),
        )
        self._spawn_recovery()

    def _spawn_recovery(self) -> None:
        if self._closed or (self._recovery is not None and not self._recovery.done()):
            return
        self._recovery = asyncio.get_running_loop().create_task(self._recover())

    async def _probe(self) -> str | None:
        """One PING through Sentinel; None when it worked, else the reason."""
        assert self._client is not None
        try:
            async with asyncio.timeout(self.probe_timeout):
                await self._client.ping()
        except (*_OUTAGE, redis_errors.RedisError) as exc:
            return self._reason(exc, self.probe_timeout)
        return None

    async def _recover(self) -> None:
        assert self._decided is not None
        delay = INITIAL_BACKOFF
        while not self._closed:
            reason = await self._probe()
            if reason is None:
                first = self._state == CONNECTING
                self._state = UP
                self._generation += 1
                self.last_error = None
                self._last_error = None
                address = self._master_address()
                if first:
                    log.info(
                        "Redis shared tier connected: master %s at %s",
                        self.master_name,
                        address,
                        extra=event("redis", state=UP, master=address),
                    )
                else:
                    self.reconnections += 1
                    log.info(
                        "Redis is back: master %s at %s",
                        self.master_name,
                        address,
                        extra=event("redis", state=UP, master=address),
                    )
                self._decided.set()
                return
            if self._state == CONNECTING:
                self._state = DOWN
                self.outages += 1
                self.last_error = reason
                log.warning(
                    "Redis unavailable at startup, using the in-process cache only "
                    "and retrying in the background: %s",
                    reason,
                    extra=event("redis", state=DOWN, reason=reason),
                )
                self._decided.set()
            else:
                log.debug("Redis reconnect failed, next try in %.1fs: %s", delay, reason)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.max_backoff)

    def _master_address(self) -> str:
        pool = self._client.connection_pool if self._client is not None else None
        address = getattr(pool, "master_address", None)
        if isinstance(address, tuple) and len(address) == 2:
            return f"{address[0]}:{address[1]}"
        return "?"

    async def _call(
        self,
        op: str,
        fn: Callable[[Redis], Awaitable[T]],
        *,
        timeout: float | None = None,
        classify: Callable[[T], str] | None = None,
    ) -> T | None:
        """Run ``fn(client)`` under the timeout; None (and counted) when down or failing."""
        client = self._client
        if self._state != UP or client is None:
            self.operations[op, "skipped"] += 1
            self.fallbacks += 1
            return None
        generation = self._generation
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):
                result = await fn(client)
        except _OUTAGE as exc:
            timed_out = isinstance(exc, TimeoutError | redis_errors.TimeoutError)
            self.operations[op, "timeout" if timed_out else "error"] += 1
            self._went_down(generation, self._reason(exc, limit))
            return None
        except redis_errors.RedisError as exc:
            self.operations[op, "error"] += 1
            reason = self._reason(exc, limit)
            if reason != self._last_error:
                self._last_error = reason
                log.warning("Redis %s failed: %s", op, reason)
            return None
        self.operations[op, "ok" if classify is None else classify(result)] += 1
        return result

    # -- keys ---------------------------------------------------------------------------------

    def mapping_key(self, name: str) -> str:
        return f"{self.prefix}:map:{name}"

    def negative_key(self, kind: object, name: str, reference: str) -> str:
        return f"{self.prefix}:neg:{kind}:{name}:{reference}"

    # -- positive mappings --------------------------------------------------------------------

    def _decode_mapping(self, value: object) -> tuple[str, float] | None:
        if not isinstance(value, str):
            return None
        try:
            entry = json.loads(value)
        except ValueError:
            return None
        if not isinstance(entry, dict):
            return None
        project, stored_at = entry.get("project"), entry.get("stored_at")
        if not isinstance(project, str) or not project:
            return None
        if not isinstance(stored_at, int | float) or isinstance(stored_at, bool):
            return None
        if self._clock() - stored_at > self.mapping_ttl:
            return None  # Redis' TTL should have removed it; a clock difference did not
        return project, float(stored_at)

    async def get_mapping(self, name: str) -> tuple[str, float] | None:
        """``(project, stored_at)`` with ``stored_at`` in wall-clock epoch seconds, or None
        (no entry, expired, or Redis down). Use :func:`wall_to_monotonic` for L1."""
        value = await self._call(
            "get_mapping",
            lambda r: r.get(self.mapping_key(name)),
            classify=lambda v: "miss" if v is None else "hit",
        )
        return self._decode_mapping(value)

    async def set_mapping(self, name: str, project: str, stored_at: float | None = None) -> None:
        """Store ``name → project`` resolved at wall-clock ``stored_at`` (default: now); Redis
        drops it ``mapping_ttl`` after ``stored_at``."""
        now = self._clock()
        stored_at = now if stored_at is None else stored_at
        expire_ms = int((stored_at + self.mapping_ttl - now) * 1000)
        if expire_ms <= 0:
            return
        value = json.dumps({"project": project, "stored_at": stored_at}, separators=(",", ":"))
        await self._call(
            "set_mapping", lambda r: r.set(self.mapping_key(name), value, px=expire_ms)
        )

    async def delete_mapping(self, name: str, project: str | None = None) -> bool | None:
        """Drop the mapping; with ``project``, only while it still points there (atomic).
        True when a key was deleted, False when there was none, None when Redis is down."""
        key = self.mapping_key(name)
        if project is None:
            deleted = await self._call("delete_mapping", lambda r: r.delete(key))
            return None if deleted is None else bool(deleted)

        async def delete_if(r: Redis) -> Any:
            return await r.eval(_DELETE_IF_PROJECT, 1, key, project)

        result = await self._call("delete_mapping", delete_if)
        return None if result is None else bool(result)

    # -- negative entries ---------------------------------------------------------------------

    async def is_negative(self, kind: object, name: str, reference: str) -> bool | None:
        """True/False when Redis answered; None when it is down or slow (unknown).

        Always False when negative caching is off (``NEGATIVE_CACHE_TTL=0``)."""
        if self.negative_ttl <= 0:
            return False
        key = self.negative_key(kind, name, reference)
        found = await self._call(
            "is_negative",
            lambda r: r.exists(key),
            classify=lambda n: "hit" if n else "miss",
        )
        return None if found is None else bool(found)

    async def set_negative(self, kind: object, name: str, reference: str) -> None:
        if self.negative_ttl <= 0:
            return
        key = self.negative_key(kind, name, reference)
        expire_ms = max(1, int(self.negative_ttl * 1000))
        await self._call("set_negative", lambda r: r.set(key, "1", px=expire_ms))

    # -- projects -----------------------------------------------------------------------------

    @staticmethod
    def _decode_projects(value: object) -> list[dict[str, Any]] | None:
        if not isinstance(value, str):
            return None
        try:
            items = json.loads(value)
        except ValueError:
            return None
        if not isinstance(items, list):
            return None
        out = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"]:
                registry_type = item.get("registry_type")
                entry: dict[str, Any] = {
                    "name": item["name"],
                    "registry_type": registry_type if isinstance(registry_type, str) else "",
                }
                hosts = item.get("hosts")
                if isinstance(hosts, list):  # absent in entries of older versions
                    entry["hosts"] = [h for h in hosts if isinstance(h, str)]
                out.append(entry)
        return out

    async def get_projects(self) -> list[dict[str, Any]] | None:
        """The last discovered projects, ``[{"name": ..., "registry_type": ..., "hosts":
        [...]}, ...]`` in priority order, or None (never stored, or Redis down). ``hosts`` is
        missing from entries an older version wrote."""
        value = await self._call(
            "get_projects",
            lambda r: r.get(self._projects_key),
            classify=lambda v: "miss" if v is None else "hit",
        )
        return self._decode_projects(value)

    async def set_projects(self, projects: Iterable[Mapping[str, Any]]) -> None:
        """Store the discovered projects (dicts with ``name``, ``registry_type`` and
        optionally ``hosts``); no TTL: a stale list is still a better start than none, and
        discovery corrects it."""
        entries = []
        for p in projects:
            entry: dict[str, Any] = {"name": p["name"], "registry_type": p.get("registry_type", "")}
            if "hosts" in p:
                entry["hosts"] = list(p["hosts"])
            entries.append(entry)
        value = json.dumps(entries, separators=(",", ":"))
        await self._call("set_projects", lambda r: r.set(self._projects_key, value))

    # -- hot names ----------------------------------------------------------------------------

    def touch(self, name: str) -> None:
        """Count one use of ``name`` for the hot set; in memory only, flushed periodically."""
        pending = self._pending_hot
        count = pending.get(name)
        if count is not None:
            pending[name] = count + 1
        elif len(pending) < HOT_PENDING_MAX:
            pending[name] = 1

    async def flush_hot(self) -> None:
        """Send the counted uses in one pipeline: halve the scores if a half-life has passed
        (once for all pods), ZINCRBY each name, trim to the ``hot_max`` hottest."""
        if not self._pending_hot or not self.available:
            return
        batch, self._pending_hot = self._pending_hot, {}
        half_life_ms = int(self.hot_half_life * 1000)

        async def send(r: Redis) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                if half_life_ms > 0:
                    pipe.eval(_DECAY_HOT, 2, self._hot_key, self._hot_decay_key, half_life_ms)
                for name, count in batch.items():
                    pipe.zincrby(self._hot_key, count, name)
                pipe.zremrangebyrank(self._hot_key, 0, -(self.hot_max + 1))
                return await pipe.execute()

        await self._call("flush_hot", send, timeout=max(self.timeout, BACKGROUND_TIMEOUT))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.hot_flush_interval)
            await self.flush_hot()

    async def hot_names(self, limit: int | None = None) -> list[str] | None:
        """The most used names, hottest first (None when Redis is down)."""
        count = self.hot_max if limit is None else limit
        if count <= 0:
            return []
        names = await self._call("hot_names", lambda r: r.zrevrange(self._hot_key, 0, count - 1))
        return None if names is None else [str(n) for n in names]

    # -- warm start ---------------------------------------------------------------------------

    async def warm_start(
        self, timeout: float | None = None, *, limit: int | None = None
    ) -> tuple[list[dict[str, Any]] | None, dict[str, tuple[str, float]]]:
        """``(projects or None, {name: (project, stored_at)})`` for the hottest names — whatever
        Redis gave within ``timeout`` seconds (default ``warm_start_timeout``), counted from
        the call. Waits for the first connection attempt only within that time; never raises.
        """
        loop = asyncio.get_running_loop()
        budget = self.warm_start_timeout if timeout is None else timeout
        end = loop.time() + budget
        projects: list[dict[str, Any]] | None = None
        mappings: dict[str, tuple[str, float]] = {}
        if self._decided is not None and not self._decided.is_set() and budget > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(end):
                    await self._decided.wait()
        count = self.hot_max if limit is None else limit

        async def fetch(r: Redis) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.get(self._projects_key)
                pipe.zrevrange(self._hot_key, 0, max(count, 1) - 1)
                return await pipe.execute()

        remaining = end - loop.time()
        if remaining <= 0 or not self.available:
            return projects, mappings
        first = await self._call("warm_start", fetch, timeout=remaining)
        if first is None:
            return projects, mappings
        projects = self._decode_projects(first[0])
        names = [str(n) for n in first[1]][: max(count, 0)]
        remaining = end - loop.time()
        if not names or remaining <= 0:
            return projects, mappings
        keys = [self.mapping_key(n) for n in names]
        values = await self._call("warm_start", lambda r: r.mget(keys), timeout=remaining)
        for name, value in zip(names, values or (), strict=False):
            entry = self._decode_mapping(value)
            if entry is not None:
                mappings[name] = entry
        return projects, mappings
