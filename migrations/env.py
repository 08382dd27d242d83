"""Alembic environment: the service's own engine (same SQLite pragmas) and metadata."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from service.settings import Settings
from service.store import Base, create_db_engine

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    # Set by Store.upgrade()/tests; otherwise the operator's TRAINLAB_DATABASE_URL.
    return config.get_main_option("sqlalchemy.url") or Settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_db_engine(_url())
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                # Batch mode alters a SQLite table by copying it and dropping the original. With foreign keys on,
                # that DROP first deletes every row that references it (ON DELETE CASCADE): recreating
                # `experiments` would take all metrics and checkpoints with it. SQLite ignores this pragma inside
                # a transaction, so it goes to the driver before one begins; the engine is disposed afterwards.
                connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            # Batch mode lets later migrations alter SQLite tables (copy-and-move). SQLite's DDL is transactional
            # too (the engine issues BEGIN itself): the whole upgrade commits at once, after the check below.
            context.configure(
                connection=connection, target_metadata=target_metadata, render_as_batch=True, transactional_ddl=True
            )
            with context.begin_transaction():
                context.run_migrations()
                if sqlite and (broken := connection.exec_driver_sql("PRAGMA foreign_key_check").all()):
                    raise RuntimeError(f"nothing migrated: rows point at nothing (table, rowid, parent): {broken[:5]}")
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
