"""Shared pytest configuration: fixture modules loaded as plugins."""

pytest_plugins = ["ingest_fixtures", "orthanc_fixtures"]
