"""paystream_storage."""
