"""The TTS service: one FastAPI app (seed voice-clone API, OpenAI-compatible API, jobs, voices).

Build it with :func:`utter.server.app.create_app` around an
:class:`utter.server.runtime.EngineHolder`; run it with ``utter serve --api-only``.
"""
