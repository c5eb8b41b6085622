"""Shared database fixtures: a private PostgreSQL database per run, SQLite files per test.

PostgreSQL: one fresh database per test run (`scorer_test_<pid>_<random>`), migrated once with
`scorer.db.migrate.upgrade`, dropped at the end. Tests get either

- `session`: a Session inside a transaction that is rolled back after the test (the
  `join_transaction_mode="create_savepoint"` recipe), so `session.commit()` in the code under test
  only releases a savepoint; or
- `engine`: a real engine whose commits are real (several connections, SKIP LOCKED); on
  PostgreSQL every table is truncated after the test.

Both are parametrized over SQLite and PostgreSQL. PostgreSQL that is down fails the tests with a
hint; it is never skipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from sqlalchemy import URL, Engine, make_url, text
from sqlalchemy.orm import Session

from scorer.db.engine import make_engine
from scorer.db.migrate import upgrade
from scorer.db.models import Base
from scorer.settings import Settings

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_HINT = (
    "PostgreSQL is not reachable at {url}: start it (.ci/run starts it; check with "
    "`pg_isready -h 127.0.0.1`) or point SCORER_TEST_PG_URL at an admin URL ({exc})"
)
DIALECTS = ["sqlite", "postgresql"]


class IsolatedSettings(Settings):
    """Settings from keyword arguments only: a developer's SCORER_* variables never leak in."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_for(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: everything under `data_dir`, CPU, embedded unless overridden."""
    values: dict[str, Any] = {"data_dir": data_dir, "device": "cpu", "torch_threads": 1}
    values.update(overrides)
    return IsolatedSettings(**values)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """`make_settings(**overrides)` -> Settings(data_dir=tmp_path, device="cpu", ...)."""

    def make(**overrides: Any) -> Settings:
        return settings_for(overrides.pop("data_dir", tmp_path), **overrides)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


# --- PostgreSQL ---------------------------------------------------------------------------------


class PgServer:
    """Creates private databases on the test server and drops them again."""

    def __init__(self, admin_url: URL) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def _admin(self) -> psycopg.Connection:
        url = self.admin_url.set(drivername="postgresql")
        return psycopg.connect(
            url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
        )

    def check(self) -> None:
        try:
            with self._admin() as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())
        shown = self.admin_url.render_as_string(hide_password=True)
        pytest.fail(PG_HINT.format(url=shown, exc=reason), pytrace=False)

    def create(self, tag: str = "") -> URL:
        name = f"scorer_test_{os.getpid()}_{secrets.token_hex(4)}{tag}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.admin_url.set(database=name)

    def drop(self, url: URL) -> None:
        name = url.database
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(self.created):
            self.drop(self.admin_url.set(database=name))


def pg_engine_for(url: URL, data_dir: Path) -> Engine:
    return make_engine(
        settings_for(data_dir, database_url=url.render_as_string(hide_password=False))
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server from SCORER_TEST_PG_URL (an admin URL); fails with a hint if down."""
    server = PgServer(make_url(os.environ.get("SCORER_TEST_PG_URL", DEFAULT_PG_ADMIN_URL)))
    server.check()
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def pg_engine(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """This run's private PostgreSQL database, migrated to head once."""
    url = pg_server.create()
    engine = pg_engine_for(url, tmp_path_factory.mktemp("pg"))
    upgrade(engine)
    yield engine
    engine.dispose()
    pg_server.drop(url)


@pytest.fixture
def empty_pg_engine(pg_server: PgServer, tmp_path: Path) -> Iterator[Engine]:
    """A fresh, empty PostgreSQL database of its own (migration tests), dropped afterwards."""
    url = pg_server.create("_empty")
    engine = pg_engine_for(url, tmp_path)
    yield engine
    engine.dispose()
    pg_server.drop(url)


def truncate_all(engine: Engine) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


class PrivatePgServer(PgServer):
    """A PostgreSQL server of the test's own (initdb in a temporary folder, trust auth, a free
    port on 127.0.0.1), so a test can crash it (`pg_ctl stop -m immediate`) and start it again
    on the same port and data without touching the shared server. Run as `postgres` when the
    tests run as root (initdb refuses root)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="scorer-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        super().__init__(make_url(f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"))

    def _tool(self, name: str) -> str:
        path = shutil.which(name) or shutil.which(name, path="/usr/local/bin")
        if path is None:
            pytest.fail(f"{name} is not installed (PostgreSQL's server binaries)", pytrace=False)
        return path

    def _run(self, *args: str, check: bool = True) -> None:
        done = subprocess.run(
            args, user=self.user, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, timeout=120, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"{' '.join(args)}: {done.stderr.decode(errors='replace')}\n{tail}")

    def init(self) -> None:
        if self.user is not None:
            shutil.chown(self.root, self.user)
        self._run(
            self._tool("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        # fsync off: a crash of the server (not of the host) loses no committed transaction,
        # since the WAL is in the kernel's cache; synchronous_commit stays on.
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c full_page_writes=off -c unix_socket_directories={self.root}"
        )
        self._run(
            self._tool("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data),
            "-l", str(self.root / "server.log"), "-o", options,
        )  # fmt: skip

    def crash(self) -> None:
        """Stop at once, as a crash would: no checkpoint, every connection cut; the next start
        runs crash recovery."""
        self._run(self._tool("pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(self.data))

    def destroy(self) -> None:
        pg_ctl = self._tool("pg_ctl")
        self._run(pg_ctl, "stop", "-m", "immediate", "-w", "-D", str(self.data), check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def private_pg_server() -> Iterator[PrivatePgServer]:
    """A private PostgreSQL server for this module's tests, which they may crash and restart."""
    server = PrivatePgServer()
    server.init()
    server.start()
    server.check()
    yield server
    server.destroy()


# --- SQLite -------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite file under tmp_path (the embedded mode's engine, WAL and all)."""
    engine = make_engine(settings_for(tmp_path))
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def empty_sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(settings_for(tmp_path))
    yield engine
    engine.dispose()


# --- both ---------------------------------------------------------------------------------------


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    """Which database a test parametrized over both runs on; `engine` and `session` follow it."""
    return request.param


@pytest.fixture
def engine(dialect: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A migrated engine whose commits are real; PostgreSQL tables are truncated afterwards."""
    if dialect == "sqlite":
        yield request.getfixturevalue("sqlite_engine")
        return
    pg: Engine = request.getfixturevalue("pg_engine")
    yield pg
    truncate_all(pg)


@pytest.fixture
def session(dialect: str, request: pytest.FixtureRequest) -> Iterator[Session]:
    """A Session whose work is rolled back after the test, on SQLite and on PostgreSQL.

    PostgreSQL: an outer transaction on one connection; the Session joins it with savepoints, so
    its own commit()/rollback() work as usual and nothing reaches the shared database. SQLite:
    the engine is a fresh file per test, so a plain Session is already isolated.
    """
    if dialect == "sqlite":
        with Session(request.getfixturevalue("sqlite_engine"), expire_on_commit=False) as s:
            yield s
        return
    pg: Engine = request.getfixturevalue("pg_engine")
    with pg.connect() as conn:
        outer = conn.begin()
        s = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield s
        finally:
            s.close()
            outer.rollback()
