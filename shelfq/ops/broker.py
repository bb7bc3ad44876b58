"""The embedded Apache Kafka broker: jars from Maven Central, one KRaft node in the background.

``deploy/kafka/`` holds the pom.xml (Kafka version), server.properties and log4j2.properties.
State lives under ``$SHELFQ_HOME/broker`` (data, logs, pid file, rendered properties); the
resolved jars under ``$SHELFQ_CACHE_DIR``, shared by every checkout and keyed by the pom's hash.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shelfq.contracts.errors import BrokerError
from shelfq.contracts.settings import Settings
from shelfq.ops.resources import deploy_dir

KAFKA_DEPLOY_DIR = deploy_dir() / "kafka"
MIN_JAVA = 17

# Broker processes this Python process started, so stop() can reap them (no zombies).
_children: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class BrokerStatus:
    """Whether the embedded broker runs, and where its files are."""

    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    log_file: Path

    def describe(self) -> str:
        if self.running:
            return (
                f"running (pid {self.pid}) at {self.bootstrap}\n"
                f"  data: {self.data_dir}\n  log:  {self.log_file}"
            )
        return f"not running (would listen on {self.bootstrap})\n  data: {self.data_dir}"


class EmbeddedBroker:
    """Resolve, format, start, inspect and stop the single-node broker of these settings."""

    def __init__(self, settings: Settings, deploy_dir: Path = KAFKA_DEPLOY_DIR) -> None:
        if settings.external_cluster:
            raise BrokerError(
                f"SHELFQ_BOOTSTRAP_SERVERS points at an existing cluster ({settings.bootstrap_servers}); "
                "the embedded broker is not used"
            )
        self.settings = settings
        self.deploy_dir = deploy_dir
        self.pom = deploy_dir / "pom.xml"
        if not self.pom.is_file():
            raise BrokerError(f"{self.pom} not found: the shelfq installation is incomplete (reinstall it)")
        self.dir = settings.home / "broker"
        self.data_dir = self.dir / "data"
        self.logs_dir = self.dir / "logs"
        self.log_file = self.logs_dir / "server.log"
        self.stdout_file = self.logs_dir / "stdout.log"
        self.pid_file = self.dir / "broker.pid"
        self.properties = self.dir / "server.properties"
        digest = hashlib.sha256(self.pom.read_bytes()).hexdigest()[:12]
        self.libs = settings.cache_dir / f"kafka-{digest}" / "libs"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the broker and wait until it serves metadata. False if it already ran."""
        with self._lock():
            if self.status().running:
                return False
            for port in (self.settings.broker_port, self.settings.controller_port):
                if _port_open(port):
                    raise BrokerError(
                        f"127.0.0.1:{port} is already in use by another process; stop it, choose "
                        "other ports (SHELFQ_BROKER_PORT, SHELFQ_CONTROLLER_PORT), or use that "
                        "cluster with SHELFQ_BOOTSTRAP_SERVERS"
                    )
            java = _java()
            libs = self.resolve_jars()
            self._render_properties()
            self._format_storage(java, libs)
            proc = self._launch(java, libs)
            self.pid_file.write_text(f"{proc.pid}\n")
            try:
                self._wait_ready(proc)
            except BaseException:  # a failed start, or Ctrl-C: leave no broker behind
                self._terminate(proc.pid, timeout=10)
                self.pid_file.unlink(missing_ok=True)
                raise
            return True

    def status(self) -> BrokerStatus:
        pid = self._pid()
        return BrokerStatus(pid is not None, pid, self.settings.bootstrap, self.data_dir, self.log_file)

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the broker cleanly (SIGTERM, controlled shutdown). False if it did not run."""
        with self._lock():
            pid = self._pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)
                return False
            self._terminate(pid, timeout)
            self.pid_file.unlink(missing_ok=True)
            return True

    # -- steps -----------------------------------------------------------------------------

    def resolve_jars(self) -> Path:
        """Copy the broker's runtime jars from Maven Central into the cache, once."""
        done = self.libs.parent / "complete"
        if done.exists():
            return self.libs
        self.libs.parent.mkdir(parents=True, exist_ok=True)
        # The cache is shared by every SHELFQ_HOME: one resolver at a time.
        with open(self.libs.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                self._resolve_into(done)
        return self.libs

    def _resolve_into(self, done: Path) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError(
                "Maven (mvn) is not on PATH; install it (apt-get install maven) "
                "or use an existing cluster with SHELFQ_BOOTSTRAP_SERVERS"
            )
        staging = self.libs.with_name("libs.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        cmd = [
            mvn, "-B", "-q", "-f", str(self.pom), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                "could not resolve the Kafka jars with Maven:\n" + _tail(result.stdout + result.stderr)
            )
        shutil.rmtree(self.libs, ignore_errors=True)
        staging.rename(self.libs)
        done.touch()

    def _render_properties(self) -> None:
        """Write server.properties with this home's data dir and the configured ports.

        The template's ports 9092 (clients) and 9093 (controller) are replaced wherever a
        listener names them, so a template may add listeners of its own (SASL, SSL).
        """
        s = self.settings
        ports = {"9092": str(s.broker_port), "9093": str(s.controller_port)}
        lines = []
        for line in (self.deploy_dir / "server.properties").read_text().splitlines():
            key, sep, value = line.partition("=")
            key = key.strip()
            if sep and key in ("listeners", "advertised.listeners", "controller.quorum.voters"):
                value = re.sub(r"(?<=127\.0\.0\.1:)(9092|9093)\b", lambda m: ports[m[1]], value)
                line = f"{key}={value}"
            elif sep and key == "log.dirs":
                line = f"log.dirs={self.data_dir}"
            lines.append(line)
        self.properties.write_text("\n".join(lines) + "\n")

    def _format_storage(self, java: str, libs: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        cluster_id = self._storage_tool(java, libs, "random-uuid").strip().splitlines()[-1]
        self._storage_tool(java, libs, "format", "-t", cluster_id, "-c", str(self.properties), "-g")

    def _storage_tool(self, java: str, libs: Path, *args: str) -> str:
        cmd = [java, "-Xmx256m", "-cp", f"{libs}/*", "kafka.tools.StorageTool", *args]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"kafka StorageTool {args[0]} failed:\n" + _tail(result.stdout + result.stderr))
        return result.stdout

    def _launch(self, java: str, libs: Path) -> subprocess.Popen:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        heap = self.settings.broker_heap
        cmd = [
            java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.deploy_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            "-cp", f"{libs}/*", "kafka.Kafka", str(self.properties),
        ]
        with open(self.stdout_file, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True,
            )
        _children[proc.pid] = proc
        return proc

    def _wait_ready(self, proc: subprocess.Popen) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + self.settings.broker_start_timeout_s
        admin = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(
                    f"the broker exited with code {proc.returncode} while starting; "
                    f"see {self.stdout_file} and {self.log_file}:\n{_tail(_read(self.stdout_file))}"
                )
            if _port_open(self.settings.broker_port):
                admin = admin or AdminClient({"bootstrap.servers": self.settings.bootstrap, "log_level": 0})
                with contextlib.suppress(Exception):
                    admin.list_topics(timeout=5)
                    return
            time.sleep(0.2)
        raise BrokerError(
            f"the broker did not accept connections within {self.settings.broker_start_timeout_s:.0f}s; "
            f"see {self.log_file}"
        )

    def _terminate(self, pid: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            warnings.warn(f"the broker (pid {pid}) ignored SIGTERM for {timeout:.0f}s; killing it", stacklevel=2)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        _children.pop(pid, None)

    def _pid(self) -> int | None:
        """The pid of this home's running broker, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"kafka.Kafka" in cmdline and str(self.properties).encode() in cmdline else None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def _alive(pid: int) -> bool:
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError(f"Java {MIN_JAVA}+ is needed for the embedded broker and none was found (JAVA_HOME, PATH)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    if match is None or int(match[1]) < MIN_JAVA:
        raise BrokerError(f"Kafka 4 needs Java {MIN_JAVA}+, {java} is: {out.strip().splitlines()[0] if out else '?'}")
    return java


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
