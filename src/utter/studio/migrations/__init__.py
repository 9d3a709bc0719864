"""Alembic migrations of the studio database (run by :meth:`utter.studio.db.Database.migrate`)."""
