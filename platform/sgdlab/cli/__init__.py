"""The `sgdlab` command (typer)."""
