"""The running daemon: its lifecycle, supervisor hosting, leases and retention."""
