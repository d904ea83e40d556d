"""The `supervisor-daemon` command: parse, call a service, print."""

from daemon.cli.entry import main

__all__ = ["main"]
