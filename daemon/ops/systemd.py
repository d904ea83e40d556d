"""sd_notify: tell systemd we are ready, what we are doing, and that we stop.

The protocol is one datagram per message to the socket in $NOTIFY_SOCKET; without that
variable (not started by systemd) every call is a no-op. Small enough to write here
rather than depend on a library. A failure to notify is logged once, never fatal.
"""

from __future__ import annotations

import os
import socket

from daemon.logs import get_logger

log = get_logger()


def notify(*messages: str) -> bool:
    """Send `KEY=value` lines to systemd; False when not under systemd or on failure."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    payload = "\n".join(messages).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError as exc:
        log.warning("systemd.notify_failed", error=str(exc))
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def stopping(text: str = "stopping") -> bool:
    return notify("STOPPING=1", f"STATUS={text}")
