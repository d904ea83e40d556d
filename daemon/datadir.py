"""The data directory: created private (0700), and an existing one that lets group or
others in is tightened when it is ours or refused (a configuration error) when not. It
holds the embedded server's files and password and the daemon id.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from daemon.errors import ConfigError
from daemon.logs import get_logger

log = get_logger()


def ensure_data_dir(path: Path) -> None:
    """Create the data directory with mode 0700 when missing; fail clearly otherwise.

    It holds the embedded server's password and files, so group and others may not
    list, read or write in it: an existing directory that lets them is tightened when
    it is ours, and refused when it is not (we cannot, and should not, change it).
    Run as root, others may still traverse it (mode 0711): the embedded server then
    runs as its own OS user, which must reach `pgdata/` inside (see db/embedded.py).
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data directory {path} cannot be created: {exc.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"data directory {path} is not a directory")
    status = path.stat()
    mode = stat.S_IMODE(status.st_mode)
    loose = mode & (0o066 if os.geteuid() == 0 else 0o077)
    if not loose:
        return
    if status.st_uid != os.geteuid():
        raise ConfigError(
            f"data directory {path} is open to other users (mode {mode:04o}) and belongs to"
            f" another user (uid {status.st_uid}); make it private (chmod 700 {path})"
            " or choose another directory"
        )
    try:
        path.chmod(mode & ~loose)
    except OSError as exc:
        raise ConfigError(f"data directory {path} cannot be made private: {exc.strerror}") from None
    log.warning("data_dir.tightened", path=str(path), was=f"{mode:04o}",
                now=f"{mode & ~loose:04o}")  # fmt: skip
