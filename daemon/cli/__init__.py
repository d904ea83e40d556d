"""The `supervisor-daemon` command: parse, call a service, print."""

from daemon.cli.commands import main

__all__ = ["main"]
