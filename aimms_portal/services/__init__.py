"""Use cases shared by the UI, the REST API and the CLI."""
