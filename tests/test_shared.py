"""The Redis tier (harbor_router/shared.py) against real redis-server + redis-sentinel processes.

Outages are real too: SIGSTOP (a hung master), kill -9 (a Sentinel failover), a closed port
(Redis absent at startup), a wrong password.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from conftest import REDIS_TEST_PASSWORD
from redis_topology import RedisTopology
from support_tools import free_port

from harbor_router.config import load_config
from harbor_router.shared import DOWN, UP, SharedStore, monotonic_to_wall, wall_to_monotonic

pytestmark = pytest.mark.integration

TIMEOUT = 0.1
MARGIN = 0.25  # scheduling slack on a loaded CI machine: a bound, not a benchmark
LOGGER = "harbor_router.shared"


def make_store(topology: RedisTopology | None = None, **options: Any) -> SharedStore:
    sentinels = options.pop("sentinels", None) or topology.sentinel_addresses  # type: ignore[union-attr]
    defaults: dict[str, Any] = {
        "timeout": TIMEOUT,
        "probe_timeout": 0.5,
        "max_backoff": 0.3,
        "mapping_ttl": 60.0,
        "negative_ttl": 30.0,
        "hot_flush_interval": 3600.0,  # tests flush explicitly
    }
    defaults.update(options)
    return SharedStore(sentinels, **defaults)


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def stores() -> AsyncIterator[list[SharedStore]]:
    """Stores a test started; closed at teardown (bounded: close never waits on Redis)."""
    started: list[SharedStore] = []
    yield started
    for store in started:
        await store.close()


@pytest.fixture
async def store(redis_sentinel: RedisTopology, stores: list[SharedStore]) -> SharedStore:
    shared = make_store(redis_sentinel)
    stores.append(shared)
    shared.start()
    await wait_for(lambda: shared.available, 5, "the store to connect")
    return shared


@pytest.fixture
def master(redis_sentinel: RedisTopology) -> Iterator[Any]:
    with redis_sentinel.master_client() as client:
        yield client


def records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == LOGGER and r.levelno == level and text in r.message
    ]


# --- round trips -------------------------------------------------------------------------------


async def test_mapping_round_trip_keeps_stored_at_and_sets_redis_ttl(
    store: SharedStore, master: Any
) -> None:
    stored_at = time.time() - 10
    await store.set_mapping("library/nginx", "dockerhub", stored_at)
    assert await store.get_mapping("library/nginx") == ("dockerhub", stored_at)
    assert await store.get_mapping("library/other") is None

    raw = json.loads(master.get("hr:map:library/nginx"))
    assert raw == {"project": "dockerhub", "stored_at": stored_at}
    # TTL counts from stored_at: 60 s mapping TTL, stored 10 s ago → about 50 s left
    assert 45_000 < master.pttl("hr:map:library/nginx") <= 50_000

    # an entry older than the whole TTL is not written at all
    await store.set_mapping("library/old", "dockerhub", time.time() - 61)
    assert master.exists("hr:map:library/old") == 0
    assert store.operations["get_mapping", "hit"] == 1
    assert store.operations["get_mapping", "miss"] == 1


async def test_delete_mapping_only_while_it_points_at_the_project(
    store: SharedStore, master: Any
) -> None:
    await store.set_mapping("acme/tool", "ghcr")
    await store.delete_mapping("acme/tool", "quay")  # moved elsewhere meanwhile: kept
    assert (await store.get_mapping("acme/tool") or ("",))[0] == "ghcr"
    await store.delete_mapping("acme/tool", "ghcr")
    assert await store.get_mapping("acme/tool") is None
    await store.set_mapping("acme/tool", "ghcr")
    await store.delete_mapping("acme/tool")
    assert master.exists("hr:map:acme/tool") == 0


async def test_negative_entries_have_their_own_ttl(store: SharedStore, master: Any) -> None:
    assert await store.is_negative(1, "acme/none", "v1") is False
    await store.set_negative(1, "acme/none", "v1")
    assert await store.is_negative(1, "acme/none", "v1") is True
    assert await store.is_negative(1, "acme/none", "v2") is False
    assert await store.is_negative(2, "acme/none", "v1") is False  # kind is part of the key
    assert 29_000 < master.pttl("hr:neg:1:acme/none:v1") <= 30_000


async def test_negative_cache_off_never_touches_redis(
    redis_sentinel: RedisTopology, stores: list[SharedStore], master: Any
) -> None:
    store = make_store(redis_sentinel, negative_ttl=0)
    stores.append(store)
    store.start()
    await wait_for(lambda: store.available, 5, "the store to connect")
    await store.set_negative(1, "a/b", "c")
    assert await store.is_negative(1, "a/b", "c") is False
    assert master.dbsize() == 0


async def test_projects_are_json_with_registry_types(store: SharedStore, master: Any) -> None:
    assert await store.get_projects() is None
    projects = [
        {"name": "dockerhub", "registry_type": "docker-hub"},
        {"name": "ghcr", "registry_type": "github-ghcr"},
    ]
    await store.set_projects(projects)
    assert await store.get_projects() == projects
    assert json.loads(master.get("hr:projects")) == projects


async def test_projects_keep_their_hosts_and_read_entries_without(
    store: SharedStore, master: Any
) -> None:
    projects = [
        {"name": "dockerhub", "registry_type": "docker-hub", "hosts": ["docker.io", "x.io"]},
        {"name": "ghcr", "registry_type": "github-ghcr", "hosts": []},
    ]
    await store.set_projects(projects)
    assert await store.get_projects() == projects
    # an older version's entry (no hosts) and junk hosts
    master.set(
        "hr:projects",
        json.dumps([{"name": "quay", "registry_type": "quay"}, {"name": "a", "hosts": [1, "b"]}]),
    )
    assert await store.get_projects() == [
        {"name": "quay", "registry_type": "quay"},
        {"name": "a", "registry_type": "", "hosts": ["b"]},
    ]


async def test_hot_set_is_bounded_and_warm_start_returns_the_hottest(
    redis_sentinel: RedisTopology, stores: list[SharedStore], master: Any
) -> None:
    store = make_store(redis_sentinel, hot_max=3)
    stores.append(store)
    store.start()
    await wait_for(lambda: store.available, 5, "the store to connect")
    uses = {"a/one": 5, "a/two": 4, "a/three": 3, "a/four": 2, "a/five": 1}
    for name, count in uses.items():
        for _ in range(count):
            store.touch(name)
        await store.set_mapping(name, "ghcr")
    await store.set_projects([{"name": "ghcr", "registry_type": "github-ghcr"}])
    assert master.exists("hr:hot") == 0  # touch() is local until a flush
    await store.flush_hot()
    assert master.zcard("hr:hot") == 3
    assert master.zscore("hr:hot", "a/one") == 5
    for _ in range(6):
        store.touch("a/five")
    await store.flush_hot()  # trimmed before; 6 now beats everything
    assert await store.hot_names() == ["a/five", "a/one", "a/two"]

    fresh = make_store(redis_sentinel)
    stores.append(fresh)
    fresh.start()
    started = time.monotonic()
    projects, mappings = await fresh.warm_start(2.0, limit=2)
    assert time.monotonic() - started < 2.0
    assert projects == [{"name": "ghcr", "registry_type": "github-ghcr"}]
    assert set(mappings) == {"a/five", "a/one"}
    assert mappings["a/five"][0] == "ghcr"


async def test_hot_scores_decay_once_per_half_life(
    redis_sentinel: RedisTopology, stores: list[SharedStore], master: Any
) -> None:
    pods = [make_store(redis_sentinel, hot_half_life=0.3) for _ in range(2)]
    stores.extend(pods)
    for pod in pods:
        pod.start()
    await wait_for(lambda: all(p.available for p in pods), 5, "the stores to connect")
    for _ in range(8):
        pods[0].touch("old/popular")
    await pods[0].flush_hot()  # first flush: the (empty) set is "halved", the marker is set
    assert master.zscore("hr:hot", "old/popular") == 8
    pods[1].touch("new/one")
    await pods[1].flush_hot()  # within the half-life: no decay, whichever pod flushes
    assert master.zscore("hr:hot", "old/popular") == 8
    await asyncio.sleep(0.4)
    for pod in pods:
        pod.touch("new/one")
        await pod.flush_hot()  # only the first flush after the half-life halves
    assert master.zscore("hr:hot", "old/popular") == 4
    assert master.zscore("hr:hot", "new/one") == 0.5 + 2


def test_time_base_conversion() -> None:
    assert wall_to_monotonic(990.0, wall=1000.0, monotonic=50.0) == 40.0
    assert wall_to_monotonic(1010.0, wall=1000.0, monotonic=50.0) == 50.0  # skew: never future
    assert monotonic_to_wall(40.0, wall=1000.0, monotonic=50.0) == 990.0


def test_from_config() -> None:
    base = {"HARBOR_URL": "http://harbor.test"}
    assert SharedStore.from_config(load_config(base)) is None
    config = load_config(
        {
            **base,
            "REDIS_SENTINELS": "s1:26380,s2",
            "REDIS_PASSWORD": REDIS_TEST_PASSWORD,
            "REDIS_KEY_PREFIX": "x",
            "REDIS_TIMEOUT": "80ms",
            "CACHE_TTL": "5m",
            "STALE_WHILE_REVALIDATE": "1m",
        }
    )
    store = SharedStore.from_config(config)
    assert store is not None
    assert store.sentinels == (("s1", 26380), ("s2", 26379))
    assert (store.prefix, store.timeout, store.mapping_ttl) == ("x", 0.08, 360.0)
    assert store.mapping_key("a/b") == "x:map:a/b"
    assert REDIS_TEST_PASSWORD not in repr(store)
    assert REDIS_TEST_PASSWORD not in repr(vars(store))


# --- outages -----------------------------------------------------------------------------------


async def test_hung_master_costs_one_timeout_then_nothing_and_recovers_by_itself(
    redis_sentinel: RedisTopology,
    store: SharedStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    await store.set_mapping("acme/tool", "ghcr")
    redis_sentinel.master.pause()  # SIGSTOP

    calls: list[Callable[[], Any]] = [
        lambda: store.get_mapping("acme/tool"),
        lambda: store.set_mapping("acme/tool", "quay"),
        lambda: store.is_negative(1, "acme/tool", "v1"),
        lambda: store.get_projects(),
        lambda: store.delete_mapping("acme/tool", "ghcr"),
    ]
    started = time.monotonic()
    results = await asyncio.gather(*(call() for call in calls))  # all in flight at once
    assert time.monotonic() - started < TIMEOUT + MARGIN
    assert results == [None] * len(calls)
    assert store.state == DOWN
    assert store.operations["get_mapping", "timeout"] == 1

    for call in calls:  # down: answered at once, without the network
        started = time.monotonic()
        assert await call() is None
        assert time.monotonic() - started < TIMEOUT / 2
    assert store.fallbacks == len(calls)
    projects, mappings = await store.warm_start(0.3)
    assert (projects, mappings) == (None, {})

    await asyncio.sleep(0.8)  # several reconnect attempts fail while it is stopped
    assert store.state == DOWN
    redis_sentinel.master.resume()  # SIGCONT
    await wait_for(lambda: store.available, 5, "the store to come back")
    assert (await store.get_mapping("acme/tool") or ("",))[0] == "ghcr"

    down = records(caplog, logging.WARNING, "Redis unavailable")
    assert len(down) == 1
    assert "no answer within 100ms" in down[0].message
    assert len(records(caplog, logging.INFO, "Redis is back")) == 1
    assert store.outages == 1
    assert store.reconnections == 1


async def test_failover_after_kill_9_fails_no_call_and_finds_the_new_master(
    make_redis_topology: Callable[..., RedisTopology],
    stores: list[SharedStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    topology = make_redis_topology()  # the sentinels fail over after 1 s of silence
    store = make_store(topology)
    stores.append(store)
    store.start()
    await wait_for(lambda: store.available, 5, "the store to connect")

    stop = asyncio.Event()
    done = {"calls": 0, "hits": 0}

    async def traffic() -> None:  # any exception escaping a call fails the test below
        i = 0
        while not stop.is_set():
            i += 1
            await store.set_mapping(f"repo/{i}", "ghcr")
            if await store.get_mapping(f"repo/{i}") is not None:
                done["hits"] += 1
            await store.is_negative(1, f"repo/{i}", "v1")
            store.touch(f"repo/{i % 7}")
            done["calls"] += 3
            await asyncio.sleep(0.005)

    task = asyncio.create_task(traffic())
    await asyncio.sleep(0.3)
    hits_before = done["hits"]
    assert hits_before > 0
    old_port = topology.master.port
    topology.kill_master()  # kill -9
    new_master = await asyncio.to_thread(topology.wait_failover, old_port, 15.0)
    assert new_master.port != old_port
    await wait_for(lambda: store.available, 15, "the store to find the new master")
    hits_after_failover = done["hits"]
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 5)
    task.result()  # no exception escaped

    assert done["hits"] > hits_after_failover  # reads hit again, on the new master
    await store.set_mapping("after/failover", "quay")
    assert (await store.get_mapping("after/failover") or ("",))[0] == "quay"
    with topology.client(new_master.port) as client:
        assert json.loads(client.get("hr:map:after/failover"))["project"] == "quay"
    assert store.outages == 1
    assert store.reconnections == 1
    assert len(records(caplog, logging.WARNING, "Redis unavailable")) == 1
    assert len(records(caplog, logging.INFO, "Redis is back")) == 1


async def test_redis_absent_at_startup(
    stores: list[SharedStore], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    store = make_store(sentinels=[("127.0.0.1", free_port()), ("127.0.0.1", free_port())])
    stores.append(store)
    started = time.monotonic()
    store.start()
    assert time.monotonic() - started < 0.05
    projects, mappings = await store.warm_start(0.5)
    assert time.monotonic() - started < 0.5 + MARGIN
    assert (projects, mappings) == (None, {})
    await wait_for(lambda: store.state == DOWN, 2, "the first attempt to fail")
    assert await store.get_mapping("a/b") is None
    assert await store.is_negative(1, "a/b", "c") is None
    await store.set_mapping("a/b", "ghcr")
    await store.set_projects([{"name": "ghcr", "registry_type": ""}])
    store.touch("a/b")
    await store.flush_hot()
    assert store.fallbacks == 4
    await asyncio.sleep(0.7)  # a few more attempts: still one warning
    warnings = records(caplog, logging.WARNING, "Redis unavailable at startup")
    assert len(warnings) == 1
    assert "No master found for 'mymaster'" in warnings[0].message
    started = time.monotonic()
    await store.close()
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("password", ["wrong-password-123", ""], ids=["wrong", "missing"])
async def test_bad_password_is_named_and_falls_back(
    redis_auth_topology: RedisTopology,
    stores: list[SharedStore],
    caplog: pytest.LogCaptureFixture,
    password: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    store = make_store(redis_auth_topology, password=password)
    stores.append(store)
    store.start()
    assert await store.warm_start(1.0) == (None, {})
    assert store.state == DOWN
    assert await store.get_mapping("a/b") is None
    warnings = records(caplog, logging.WARNING, "Redis unavailable")
    assert len(warnings) == 1
    assert "authentication failed (check REDIS_PASSWORD" in warnings[0].message
    for text in (caplog.text, repr(store), repr(vars(store)), store.last_error or ""):
        assert REDIS_TEST_PASSWORD not in text
        if password:
            assert password not in text


async def test_right_password_works(
    redis_auth_topology: RedisTopology, stores: list[SharedStore]
) -> None:
    store = make_store(redis_auth_topology, password=REDIS_TEST_PASSWORD)
    stores.append(store)
    store.start()
    await wait_for(lambda: store.available, 5, "the store to connect")
    await store.set_mapping("auth/ok", "ghcr")
    assert (await store.get_mapping("auth/ok") or ("",))[0] == "ghcr"
    assert REDIS_TEST_PASSWORD not in repr(store)


@pytest.mark.parametrize("sentinel_auth", [True, False], ids=["sentinel-auth", "no-sentinel-auth"])
async def test_password_protected_sentinels(
    redis_sentinel_auth_topology: RedisTopology,
    stores: list[SharedStore],
    caplog: pytest.LogCaptureFixture,
    sentinel_auth: bool,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = make_store(
        redis_sentinel_auth_topology, password=REDIS_TEST_PASSWORD, sentinel_auth=sentinel_auth
    )
    stores.append(store)
    store.start()
    await store.warm_start(1.0)
    if sentinel_auth:
        assert store.state == UP
        await store.set_mapping("auth/sentinel", "quay")
        assert (await store.get_mapping("auth/sentinel") or ("",))[0] == "quay"
    else:
        assert store.state == DOWN
        (warning,) = records(caplog, logging.WARNING, "Redis unavailable")
        assert "authentication failed" in warning.message
        assert "REDIS_SENTINEL_AUTH" in warning.message
    assert REDIS_TEST_PASSWORD not in caplog.text
