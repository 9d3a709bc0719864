"""The studio: clone voices, speak texts in them and keep the history, in the browser.

A FastAPI app (``app.create_studio_app``) over a database (SQLite or PostgreSQL, schema owned by
Alembic), files under a data directory, and a durable job queue whose workers talk to TTS
through a provider: the in-process engine or a remote utter service.
"""
