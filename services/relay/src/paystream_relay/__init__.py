"""paystream_relay."""
