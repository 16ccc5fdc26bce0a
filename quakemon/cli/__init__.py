"""The `quakemon` command line: one module per command family, `app` holds the parser and dispatch."""

from quakemon.cli.app import main

__all__ = ["main"]
