"""Ingest HTTP API: authenticates, validates and publishes commands."""
