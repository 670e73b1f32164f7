"""Start private `redis-server` processes (one server or a 6-node cluster) on free local ports.

Used by the test fixtures and by `codeforge bench`, which must run against a real Redis without touching
any server the user already has. Each server lives in its own temporary directory.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from codeforge.queue.errors import QueueConfigError


def free_port() -> int:
    """A TCP port that is free now (and, for a cluster, whose +10000 bus port is free too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free local port pair found")


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise QueueConfigError(
            "redis-server is not installed: run `make deps` (it installs Debian's redis-server) "
            "or install Redis >= 7.0 yourself"
        )
    return path


@dataclass
class LocalRedis:
    """One private redis-server process."""

    port: int = 0
    password: str | None = None
    appendonly: bool = False
    appendfsync: str = "everysec"
    cluster: bool = False
    tls: tuple[Path, Path, Path] | None = None  # (cert, key, ca): serve TLS only
    extra: list[str] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="codeforge-redis-")))
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", "0" if self.tls else str(self.port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.workdir / "redis.log"),
            "--maxclients", "10000",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.workdir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
        if self.tls:
            cert, key, ca = self.tls
            args += [
                "--tls-port", str(self.port),
                "--tls-cert-file", str(cert),
                "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        return args + self.extra

    def start(self, timeout: float = 10.0) -> LocalRedis:
        self.process = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                log = (
                    (self.workdir / "redis.log").read_text() if (self.workdir / "redis.log").exists() else ""
                )
                raise RuntimeError(f"redis-server exited at start: {err}{log[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                if self._ping():
                    return self
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not come up within {timeout}s")

    def _ping(self) -> bool:
        if self.tls:
            return True  # a TLS listener accepting connections is up; redis-cli may lack TLS
        try:
            self.cli("PING")
        except subprocess.CalledProcessError:
            return False
        return True

    def cli(self, *args: str) -> str:
        cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port)]
        if self.password:
            cmd += ["--no-auth-warning", "-a", self.password]
        out = subprocess.run(cmd + list(args), check=True, capture_output=True, timeout=30)
        text = out.stdout.decode().strip()
        if text.startswith(("ERR", "LOADING", "NOAUTH", "MASTERDOWN")):
            raise subprocess.CalledProcessError(1, cmd, out.stdout, out.stderr)
        return text

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def start_replica(self, timeout: float = 30.0) -> LocalRedis:
        """Start a replica of this server (same AOF settings) and wait until it is in sync."""
        return start_replica_of(self.port, self.password, self.appendonly, self.appendfsync, timeout)

    def stop(self) -> None:
        """SIGTERM; SIGKILL if the server has not exited 30 s later (a CI run once saw a replica's shutdown,
        just after a SIGSTOP/SIGCONT, outlast that on a busy machine): its files go either way."""
        try:
            self.kill(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_replica_of(
    port: int, password: str | None, appendonly: bool, appendfsync: str, timeout: float = 30.0
) -> LocalRedis:
    """A private replica of the local server on `port`, started and in sync."""
    replica = LocalRedis(
        password=password,
        appendonly=appendonly,
        appendfsync=appendfsync,
        extra=["--replicaof", "127.0.0.1", str(port)],
    ).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "master_link_status:up" in replica.cli("INFO", "replication"):
            return replica
        time.sleep(0.05)
    replica.stop()
    raise RuntimeError(f"replica of 127.0.0.1:{port} did not sync within {timeout}s")


@dataclass
class LocalRedisCluster:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, all local processes."""

    masters: int = 3
    replicas: int = 1
    password: str | None = None
    appendonly: bool = False
    appendfsync: str = "everysec"
    nodes: list[LocalRedis] = field(default_factory=list)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 60.0) -> LocalRedisCluster:
        count = self.masters * (1 + self.replicas)
        self.nodes = [
            LocalRedis(
                cluster=True, password=self.password, appendonly=self.appendonly, appendfsync=self.appendfsync
            ).start()
            for _ in range(count)
        ]
        cmd = ["redis-cli", "--cluster", "create"]
        cmd += [f"127.0.0.1:{n.port}" for n in self.nodes]
        cmd += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        if self.password:
            cmd += ["-a", self.password, "--no-auth-warning"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._healthy(n) for n in self.nodes):
                return self
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not reach cluster_state:ok")

    def master_of(self, key: str) -> LocalRedis:
        """The node serving `key`'s slot as master now."""
        alive = [n for n in self.nodes if n.process and n.process.poll() is None]
        slot = int(alive[0].cli("CLUSTER", "KEYSLOT", key))
        for line in alive[0].cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                low, _, high = span.partition("-")
                if low.isdigit() and int(low) <= slot <= int(high or low):
                    port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"no master serves slot {slot}")

    @staticmethod
    def _healthy(node: LocalRedis) -> bool:
        try:
            info = node.cli("CLUSTER", "INFO")
        except subprocess.CalledProcessError:
            return False
        if "cluster_state:ok" not in info or "cluster_slots_assigned:16384" not in info:
            return False
        # A replica that has not finished its first sync cannot take over its master: wait for the link.
        replication = node.cli("INFO", "replication")
        return "role:master" in replication or "master_link_status:up" in replication

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def redis_available() -> bool:
    return shutil.which("redis-server") is not None
