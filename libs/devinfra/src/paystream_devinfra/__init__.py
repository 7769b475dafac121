"""paystream_devinfra."""
