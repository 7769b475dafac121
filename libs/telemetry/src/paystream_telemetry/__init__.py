"""Tracing and structured logs for every paystream process."""
