"""The migrations build exactly the schema the models describe, and undo it cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from auditor.db import migrate
from auditor.db.models import Base
from auditor.db.session import make_engine


def roundtrip(url: str) -> None:
    engine = make_engine(url)
    migrate.upgrade(url)
    with engine.connect() as connection:
        diff = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
        tables = set(inspect(connection).get_table_names())
    assert diff == [], f"models and migrations differ: {diff}"
    assert {"datasets", "images", "labels", "findings", "audits", "reviews"} <= tables
    assert migrate.current_revision(engine) == migrate.head_revision()

    migrate.downgrade(url)
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_sqlite_upgrade_downgrade_and_no_model_drift(tmp_path):
    roundtrip(f"sqlite:///{tmp_path / 'fresh.db'}")


def test_postgres_upgrade_downgrade_and_no_model_drift(postgres_schema_url):
    engine = make_engine(postgres_schema_url)
    with engine.begin() as connection:
        schema = connection.execute(text("select current_schema()")).scalar()
        connection.execute(text(f'CREATE SCHEMA "{schema}_mig"'))
    engine.dispose()
    url = postgres_schema_url.replace(schema, f"{schema}_mig")
    try:
        roundtrip(url)
    finally:
        engine = make_engine(postgres_schema_url)
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}_mig" CASCADE'))
        engine.dispose()


def test_embedded_sqlite_migrates_itself(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'auto.db'}")
    migrate.ensure_schema(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
