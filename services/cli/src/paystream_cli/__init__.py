"""paystream_cli."""
