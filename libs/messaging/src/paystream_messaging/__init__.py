"""paystream_messaging."""
