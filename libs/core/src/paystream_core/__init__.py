"""paystream_core."""
