"""Alembic environment of glip-node.

The database URL comes from, in order: the caller (``dicomnode db upgrade`` passes it in
``config.attributes["url"]``), ``alembic -x url=...``, the ini's sqlalchemy.url, or the
node configuration ($DICOMNODE_CONFIG and DICOMNODE_* environment variables).
"""

from __future__ import annotations

from alembic import context

from dicomnode.db.models import Base
from dicomnode.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        url = config.get_main_option("sqlalchemy.url")
    if not url:
        from dicomnode.config import load_config

        url = load_config().database_url
    return str(url)


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
