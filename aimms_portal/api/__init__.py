"""The REST API (FastAPI), mounted around the Reflex app."""

#: Every REST resource lives under this path.
API_PREFIX = "/api/v1"
