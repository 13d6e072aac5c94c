"""Engine and session construction for SQLite (embedded) and PostgreSQL (production)."""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from auditor.config import get_settings


def make_engine(
    url: str,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pool_timeout: float | None = None,
) -> Engine:
    """SQLite gets foreign keys, WAL, a busy timeout and write-locking transactions, so the API
    and workers can share one file; production concurrency belongs to PostgreSQL.

    A server database gets a connection pool sized by `AUDITOR_DB_POOL_SIZE`,
    `AUDITOR_DB_MAX_OVERFLOW` and `AUDITOR_DB_POOL_TIMEOUT` unless the caller passes sizes. The
    API runs each request in a thread pool of 40 and holds one connection per request, so the
    default (10 kept, 10 more under load) serves bursts of clients while leaving most of
    PostgreSQL's 100 connections to workers and other replicas; requests beyond that queue for
    a connection instead of failing."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            # The driver's own transaction handling breaks SAVEPOINT; SQLAlchemy emits BEGIN itself.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection) -> None:
            # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
            # writes fails at once (no busy wait) when another writer committed in between.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    settings = get_settings()
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size if pool_size is None else pool_size,
        max_overflow=settings.db_max_overflow if max_overflow is None else max_overflow,
        pool_timeout=settings.db_pool_timeout if pool_timeout is None else pool_timeout,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
