"""A throwaway PostgreSQL cluster (Debian's binaries, run as `postgres`) for tests and benchmarks."""

import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """initdb + pg_ctl in a temp dir; unix socket in that dir only (no TCP listener)."""

    def __init__(self, durable: bool = False) -> None:
        # Tests need no durability (fsync=off is much faster); a benchmark of durable ingest does,
        # as SQLite's synchronous=FULL has it, or it would measure a promise PostgreSQL does not keep.
        self.dir = Path(tempfile.mkdtemp(prefix="tr7-pg-"))
        self.port = _free_port()  # only names the socket file; unique per cluster
        shutil.chown(self.dir, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        self._pg(
            "pg_ctl",
            "-D",
            str(self.dir / "data"),
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses='' -c fsync={'on' if durable else 'off'} "
            "-c max_connections=200",
        )
        self.admin_url = f"postgresql://postgres@/postgres?host={self.dir}&port={self.port}"

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.dir,
        )

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def new_database(admin_url: str) -> str:
    """Create an empty database next to ``admin_url``'s and return its URL."""
    name = "tr7_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    base, _, query = admin_url.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")
