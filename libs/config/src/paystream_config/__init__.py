"""paystream_config."""
