"""The two SQL engines the store runs on, behind one small interface.

* SQLite — a file under MODEL_DIR (the default): one machine, WAL, synchronous=FULL; BEGIN IMMEDIATE makes every
  write transaction the only writer.
* PostgreSQL — ``STORE_URL=postgresql://…``: several backend replicas and workers on several machines. A write
  transaction that reads before it writes takes one transaction-scoped advisory lock first, so replicas taking the
  same webhook, or requesting the same job, queue exactly as SQLite's writers do; job claims use
  ``FOR UPDATE SKIP LOCKED`` and never wait on each other.

The store writes its SQL once, in the dialect both accept (``?`` placeholders, ``ON CONFLICT … DO UPDATE``,
``RETURNING``); the PostgreSQL side translates placeholders and column types.
"""
from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

WRITER_LOCK = 1_234_512_345  # the advisory lock PostgreSQL writers share (any constant; one per database)


class Tx(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...


class Database(Protocol):
    dialect: str

    def read(self, sql: str, params: Sequence[Any] = ()) -> list: ...
    def transaction(self, serialize: bool = True) -> Iterator[Tx]: ...
    def script(self, ddl: str) -> None: ...
    def close(self) -> None: ...


def open_database(url: str) -> Database:
    """`url` is a path (SQLite) or postgresql://user:password@host:port/database."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    return SqliteDatabase(Path(url.removeprefix("sqlite:///")))


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, tuple(params)).fetchall()

    @contextmanager
    def transaction(self, serialize: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue instead of failing half-way."""
        conn = self.connection()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite has already rolled back after some errors ('database or disk is full')
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def script(self, ddl: str) -> None:
        """Statement by statement: executescript() would commit a caller's open transaction first."""
        conn = self.connection()
        for statement in ddl.split(";"):
            if statement.strip():
                conn.execute(statement)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _pg(sql: str) -> str:
    """psycopg's placeholders are %s, and a literal % (LIKE 'queue:%') must be doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


class _PgTx:
    def __init__(self, cursor):
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()):
        self._cursor.execute(_pg(sql), tuple(params))
        return self._cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]):
        self._cursor.executemany(_pg(sql), [tuple(r) for r in rows])
        return self._cursor


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, url: str):
        self.url = url
        self._local = threading.local()

    def connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            import psycopg
            from psycopg.rows import dict_row

            conn = psycopg.connect(self.url, row_factory=dict_row, autocommit=True, connect_timeout=10)
            self._local.conn = conn
        return conn

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        with self.connection().cursor() as cursor:
            cursor.execute(_pg(sql), tuple(params))
            return cursor.fetchall() if cursor.description else []

    @contextmanager
    def transaction(self, serialize: bool = True) -> Iterator[_PgTx]:
        conn = self.connection()
        with conn.transaction(), conn.cursor() as cursor:
            if serialize:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            yield _PgTx(cursor)

    def script(self, ddl: str) -> None:
        with self.connection().cursor() as cursor:
            for statement in ddl.split(";"):
                if statement.strip():
                    cursor.execute(postgres_ddl(statement))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def postgres_ddl(statement: str) -> str:
    """SQLite's column types in PostgreSQL's words: ids and counters need 64 bits, REAL is a double."""
    statement = statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", re.sub(r"\bINTEGER\b", "BIGINT", statement))
