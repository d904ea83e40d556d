"""The running daemon: its lifecycle, the parts it is made of (components), supervisor
hosting, leases and retention."""
