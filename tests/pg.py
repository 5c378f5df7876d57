"""A real, throw-away PostgreSQL server for the tests: ``initdb`` into a temporary folder, ``pg_ctl start``
on a free port on 127.0.0.1, stopped and deleted afterwards (``postgres_server``, a session fixture in
conftest.py).

The binaries are Debian's ``postgresql`` package (``scripts/ensure-debian-package.sh`` installs it; ``make test``
runs that first). PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system
user (``runuser``), which the package creates. Authentication is ``trust`` on loopback only.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def postgres_bin_dir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, else the newest ``/usr/lib/postgresql/<v>/bin``."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server; ``url(db)`` is a plain ``postgresql://`` URL (the program maps the driver)."""

    bin_dir: Path
    root: Path
    port: int
    as_user: list[str]

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (fresh each call: dropped first if it exists); return its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self) -> None:
        data = self.root / "data"
        self._run(str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync")
        # -F: no fsync (a test database); -k: the socket in our own folder, not /var/run/postgresql.
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -F -c max_connections=200"
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-o", options,
                  "-w", "-t", "120", "start")

    def stop(self) -> None:
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop",
                      timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb + start a server on a free loopback port; raises RuntimeError when PostgreSQL is missing."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (no pg_ctl): `apt-get install postgresql` "
                           "(Debian's postgresql package), as `make test` does")
    root = Path(tempfile.mkdtemp(prefix="sift-test-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses root: run it as the package's system user
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    for attempt in range(3):  # a free port can be taken between choosing it and binding it
        server = PostgresServer(bin_dir, root, _free_port(), as_user)
        try:
            server.start()
            return server
        except RuntimeError:
            if attempt == 2:
                raise
            shutil.rmtree(root / "data", ignore_errors=True)
            time.sleep(1)
    raise AssertionError("unreachable")
