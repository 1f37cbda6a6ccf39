"""The runner: the small agent inside every session container.

It fetches and verifies the runtime and the bundle, prepares the runtime's environment
(cached by digest), runs the app's procedures (solve sessions) and reports over the REST
API with its session-scoped token. It holds no database credentials and shares no
folder with the portal, so it runs the same way on the portal's machine (local
launcher), in a Docker container or in an ECS task. See :mod:`aimms_portal.runner.agent`.

It imports nothing heavy (no web framework, no database driver): a session's start-up
time is part of every cold job's latency.
"""
