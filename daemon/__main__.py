"""`python -m daemon` is the same as the `supervisor-daemon` command."""

from daemon.cli import main

raise SystemExit(main())
