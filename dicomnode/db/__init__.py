"""Database: models (``dicomnode.db.models``), the session factory
(``dicomnode.db.session``) and migrations (``dicomnode.db.migrate``, alembic scripts in
``db/migrations``)."""
