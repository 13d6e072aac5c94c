"""Programmatic Alembic: `auditor db upgrade` and the tests use these, no ini file needed."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url: str | None = None, connection: Connection | None = None, revision="head") -> None:
    command.upgrade(alembic_config(url, connection), revision)


def downgrade(
    url: str | None = None, connection: Connection | None = None, revision="base"
) -> None:
    command.downgrade(alembic_config(url, connection), revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def ensure_schema(engine: Engine) -> None:
    """The embedded SQLite file migrates itself; a shared server must be migrated deliberately."""
    if current_revision(engine) == head_revision():
        return
    if engine.dialect.name == "sqlite":
        with engine.begin() as connection:
            upgrade(connection=connection)
        return
    raise RuntimeError(
        f"the database at {engine.url.render_as_string(hide_password=True)} is not at the newest "
        "schema; run `auditor db upgrade` first"
    )
