"""A real Redis Sentinel topology on loopback ports: one master, one replica, three sentinels.

Every process is Debian's ``redis-server`` / ``redis-sentinel`` started from a config file
written into a private directory (Sentinel rewrites its config file, so it must be writable).
:meth:`RedisTopology.start` returns once the replica is in sync and every sentinel agrees on the
master and knows the replica and the two other sentinels, so a failover can happen right away.
:meth:`RedisTopology.stop` SIGKILLs whatever is still running (stopped processes are continued
first), so a failed test never leaves an orphan behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from support_tools import free_port

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000

_SERVER_CONFIG = """\
port {port}
bind 127.0.0.1
protected-mode no
daemonize no
dir {dir}
logfile {dir}/redis.log
save ""
appendonly no
repl-diskless-sync yes
repl-diskless-sync-delay 0
repl-ping-replica-period 1
"""

_SENTINEL_CONFIG = """\
port {port}
bind 127.0.0.1
protected-mode no
daemonize no
dir {dir}
logfile {dir}/sentinel.log
sentinel monitor {name} 127.0.0.1 {master_port} 2
sentinel down-after-milliseconds {name} {down_after}
sentinel failover-timeout {name} {failover_timeout}
sentinel parallel-syncs {name} 1
"""


class TopologyError(RuntimeError):
    pass


class Process:
    """One ``redis-server`` or ``redis-sentinel`` process."""

    def __init__(self, role: str, binary: str, workdir: Path, port: int, config: str) -> None:
        self.role = role
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.config_path = workdir / ("sentinel.conf" if "sentinel" in role else "redis.conf")
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config.format(port=port, dir=workdir))
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False  # SIGSTOPped
        self.killed = False  # on purpose, by kill()

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signum)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.stopped = False

    def kill(self) -> None:
        """SIGKILL and reap (a stopped process dies too: SIGKILL needs no SIGCONT)."""
        if self.proc is None:
            return
        self.killed = True
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.stopped = False

    def log_tail(self, lines: int = 15) -> str:
        name = "sentinel.log" if "sentinel" in self.role else "redis.log"
        try:
            text = (self.workdir / name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class RedisTopology:
    """Master + replica + three sentinels, optionally with ``requirepass`` everywhere.

    ``password`` protects the master and the replica (``requirepass`` + ``masterauth``; the
    sentinels get ``auth-pass``). ``sentinel_password`` additionally protects the sentinels
    (``requirepass`` + ``sentinel-pass`` between them). ``down_after_ms`` is how long the master
    may be silent before the sentinels fail over: keep it long for a topology whose master
    tests SIGSTOP, short (1 s) for a failover test.
    """

    START_TIMEOUT = 15.0

    def __init__(
        self,
        workdir: Path,
        *,
        server_binary: str = "redis-server",
        sentinel_binary: str = "redis-sentinel",
        password: str = "",
        sentinel_password: str = "",
        sentinels: int = 3,
        down_after_ms: int = DOWN_AFTER_MS,
    ) -> None:
        self.workdir = Path(workdir)
        self.password = password
        self.sentinel_password = sentinel_password
        self.master_name = MASTER_NAME
        master_port, replica_port = free_port(), free_port()
        auth = ""
        if password:
            auth = f"requirepass {password}\nmasterauth {password}\n"
        self.master = Process(
            "master", server_binary, self.workdir / "r1", master_port, _SERVER_CONFIG + auth
        )
        self.replica = Process(
            "replica",
            server_binary,
            self.workdir / "r2",
            replica_port,
            _SERVER_CONFIG + auth + f"replicaof 127.0.0.1 {master_port}\n",
        )
        sentinel_config = _SENTINEL_CONFIG.format(
            port="{port}",
            dir="{dir}",
            name=MASTER_NAME,
            master_port=master_port,
            down_after=down_after_ms,
            failover_timeout=FAILOVER_TIMEOUT_MS,
        )
        if password:
            sentinel_config += f"sentinel auth-pass {MASTER_NAME} {password}\n"
        if sentinel_password:
            sentinel_config += (
                f"requirepass {sentinel_password}\nsentinel sentinel-pass {sentinel_password}\n"
            )
        self.sentinels = [
            Process(
                f"sentinel{i + 1}",
                sentinel_binary,
                self.workdir / f"s{i + 1}",
                free_port(),
                sentinel_config,
            )
            for i in range(sentinels)
        ]

    # -- addresses and clients

    @property
    def servers(self) -> list[Process]:
        return [self.master, self.replica]

    @property
    def processes(self) -> list[Process]:
        return [*self.servers, *self.sentinels]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def client(self, port: int, *, sentinel: bool = False, timeout: float = 1.0) -> redis.Redis:
        password = self.sentinel_password if sentinel else self.password
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            password=password or None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )

    def server_for_port(self, port: int) -> Process:
        for process in self.servers:
            if process.port == port:
                return process
        raise KeyError(port)

    def master_port(self) -> int | None:
        """The master's port as the first answering sentinel reports it, or None."""
        for sentinel in self.sentinels:
            if not sentinel.alive or sentinel.stopped:
                continue
            try:
                with self.client(sentinel.port, sentinel=True, timeout=0.5) as client:
                    address = client.sentinel_get_master_addr_by_name(self.master_name)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def current_master(self) -> Process:
        port = self.master_port()
        if port is None:
            raise TopologyError("no sentinel reports a master")
        return self.server_for_port(port)

    # -- life cycle

    def start(self) -> RedisTopology:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            # servers first: a sentinel that meets a master not yet listening (or not yet
            # loaded) can take a whole INFO period (10 s) to settle
            for process in self.servers:
                process.spawn()
            self._poll("the servers to answer PING", self._servers_answer, self.START_TIMEOUT)
            for process in self.sentinels:
                process.spawn()
            self.wait_ready(self.START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in self.processes:
            process.kill()

    def __enter__(self) -> RedisTopology:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _poll(self, what: str, check: object, timeout: float) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            for process in self.processes:
                if process.proc is not None and not process.killed and not process.alive:
                    raise TopologyError(
                        f"{process.role} exited with {process.proc.returncode}:\n"
                        + process.log_tail()
                    )
            try:
                if check():
                    return
            except redis.RedisError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise TopologyError(f"timed out waiting for {what} (last error: {last!r})")
            time.sleep(0.05)

    def _servers_answer(self) -> bool:
        for process in self.servers:
            with self.client(process.port) as client:
                client.ping()
        return True

    def _replica_in_sync(self, replica: Process) -> bool:
        with self.client(replica.port) as client:
            info = client.info("replication")
        return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

    def _sentinels_agree(self, master: Process, replicas: list[Process]) -> bool:
        for sentinel in self.sentinels:
            with self.client(sentinel.port, sentinel=True) as client:
                state = client.sentinel_master(self.master_name)
                if int(state["port"]) != master.port or state.get("is_sdown"):
                    return False
                if int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                    return False
                known = {int(r["port"]) for r in client.sentinel_slaves(self.master_name)}
                if not {r.port for r in replicas} <= known:
                    return False
        return True

    def wait_ready(self, timeout: float) -> None:
        """Bounded poll: servers answer, the replica is in sync, the sentinels agree."""

        def sentinels_answer() -> bool:
            for sentinel in self.sentinels:
                with self.client(sentinel.port, sentinel=True) as client:
                    client.ping()
            return True

        self._poll("the servers to answer PING", self._servers_answer, timeout)
        self._poll("the sentinels to answer PING", sentinels_answer, timeout)
        self._poll("the replica to sync", lambda: self._replica_in_sync(self.replica), timeout)
        self._poll(
            "the sentinels to agree on the master",
            lambda: self._sentinels_agree(self.master, [self.replica]),
            timeout,
        )

    def kill_master(self) -> Process:
        """SIGKILL the current master (kill -9) and return it."""
        master = self.current_master()
        master.kill()
        return master

    def wait_failover(self, old_port: int, timeout: float) -> Process:
        """Bounded poll until every live sentinel reports a master other than ``old_port`` and
        that master accepts writes; returns the new master."""

        def promoted() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                with self.client(sentinel.port, sentinel=True) as client:
                    address = client.sentinel_get_master_addr_by_name(self.master_name)
                ports.add(int(address[1]))
            if len(ports) != 1 or old_port in ports:
                return False
            with self.client(ports.pop()) as client:
                return client.info("replication").get("role") == "master"

        self._poll("the sentinels to promote a new master", promoted, timeout)
        return self.current_master()

    def flushall(self) -> None:
        with self.client(self.current_master().port) as client:
            client.flushall()

    def master_client(self) -> redis.Redis:
        return self.client(self.current_master().port)
