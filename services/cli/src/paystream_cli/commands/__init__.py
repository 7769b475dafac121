"""The `paystream` command groups, one module each; `paystream_cli.main` registers them."""
