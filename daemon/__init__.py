"""supervisor-daemon: a crash-proof home for long-running supervisors."""

__version__ = "0.1.0"
