"""Settings: parsed and validated once, at the edge, into one frozen object.

Sources, lowest precedence first: built-in defaults, an optional TOML file
(`SUPERVISOR_DAEMON_CONFIG` or `--config`), then `SUPERVISOR_DAEMON_*` environment
variables. The database URL may instead come from a systemd credential named
`database-url` (`LoadCredential=`: a file in `$CREDENTIALS_DIRECTORY`), so that it sits
in no environment; it overrides the file, and given both as a credential and in the
environment it is refused. Every problem is a ConfigError with one sentence naming the
setting, so the CLI can print it and exit 78. This module never touches the network or
the database.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon.datadir import ensure_data_dir
from daemon.errors import ConfigError

ENV_PREFIX = "SUPERVISOR_DAEMON_"
# The systemd credential holding the database URL (see systemd/supervisor-daemon.service).
DATABASE_URL_CREDENTIAL = "database-url"
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


# Never passed on, even when allowed: the daemon's settings and libpq's password sources
# (asyncpg reads both when the URL carries no password).
WITHHELD_PREFIX = "SUPERVISOR_DAEMON_"
WITHHELD_NAMES = frozenset({"PGPASSWORD", "PGPASSFILE"})
# A variable name, or a prefix ending in `*` (`AWS_*`).
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")


def check_name(name: str) -> str:
    """`name` when an operator may allow it; ValueError saying why not otherwise."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{name!r} is not a variable name (or a prefix ending in *)")
    if name.upper().startswith(WITHHELD_PREFIX):
        raise ValueError(f"{name!r}: the daemon's own settings are never passed on")
    if name.upper() in WITHHELD_NAMES:
        raise ValueError(f"{name!r} may hold the daemon's database password")
    return name


def default_data_dir() -> Path:
    """The per-user state directory (XDG), where the embedded database lives."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "supervisor-daemon"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the daemon is told from outside. Built by `load_settings`."""

    database_url: str | None = None
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    daemon_id: str | None = None
    log_format: str = "auto"
    log_level: str = "info"
    pool_min_size: int = 2
    pool_max_size: int = 10
    connect_timeout_s: float = 10.0
    # How long `run` keeps trying a database it cannot reach before it exits with 69
    # (EX_UNAVAILABLE, which systemd restarts): started before its database, it waits.
    connect_wait_s: float = 60.0
    # Persistence queue (see daemon/persistence/queue.py for why these defaults).
    queue_max_events: int = 100_000
    queue_batch_size: int = 5_000
    queue_flush_delay_ms: float = 0.0
    queue_lanes: int = 2
    drain_timeout_s: float = 10.0
    # Crash-loop guard: more automatic restorations than this within the window park
    # a supervisor as blocked.
    crash_loop_max_restorations: int = 5
    crash_loop_window_s: float = 600.0
    capacity: int = 100_000
    heartbeat_interval_s: float = 5.0
    claim_interval_s: float = 5.0
    # How long a daemon's lease lasts: others may take its supervisors over this long
    # after it was last renewed (renewals come every third of it).
    lease_s: float = 30.0
    # On SIGTERM, hand the supervisors over (a new epoch, the lease ended) so that other
    # daemons claim them at their next round; off, they wait for this daemon's restart
    # (or for its lease to expire).
    release_on_stop: bool = True
    poll_interval_s: float = 1.0
    task_timeout_s: float = 600.0
    webhook_url: str | None = None
    # The webhook goes straight to its URL unless told to use the proxy of the
    # environment (http_proxy, https_proxy, no_proxy).
    webhook_use_proxy: bool = False
    # Variables of the daemon's environment that command agents and task commands get
    # beyond the basics (PATH, HOME, locale...): names, or prefixes ending in `*`.
    agent_env: tuple[str, ...] = ()
    # host:port to serve Prometheus metrics on (/metrics); unset: no metrics server.
    metrics_address: tuple[str, int] | None = None
    # How often the metrics' database gauges (supervisors by state, pending questions)
    # are read: one scan of supervisor_states each time, never one per scrape.
    metrics_refresh_s: float = 15.0
    # `supervisor-daemon web`: where it listens, and the token it asks for (required
    # on any address but loopback). Never shown: not in repr, masked in logs.
    web_address: tuple[str, int] = ("127.0.0.1", 8765)
    web_token: str | None = dataclasses.field(default=None, repr=False)
    # How many of a supervisor's newest messages restoration loads (its length is
    # always known); agents page older ones with read_history.
    history_tail: int = 50
    # Days after which the rows of a completed or failed supervisor (messages, journal,
    # tasks, checkpoints) are deleted by a running daemon; unset: kept forever.
    retention_days: float | None = None

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None


# name -> converter; the converter raises ValueError with a readable message.
def _positive_int(value: Any) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _non_negative_float(value: Any) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must be zero or more")
    return number


def _positive_float(value: Any) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be a positive number")
    return number


def _retention_days(value: Any) -> float | None:
    text = str(value).strip()
    if not text:
        return None
    return _positive_float(text)


def _webhook_url(value: Any) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    if urlsplit(text).scheme not in ("http", "https"):
        raise ValueError("must be an http:// or https:// URL")
    return text


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _names(value: Any) -> tuple[str, ...]:
    # A comma-separated string (environment) or a list of strings (TOML).
    items = value if isinstance(value, list) else str(value).split(",")
    return tuple(check_name(str(item).strip()) for item in items if str(item).strip())


def _address(value: Any) -> tuple[str, int] | None:
    text = str(value).strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")  # [::1]:9464
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port, for example 127.0.0.1:9464")
    return host, int(port)


def web_address(value: Any) -> tuple[str, int]:
    """host:port for the web page; port 0 lets the system choose a free one."""
    host, sep, port = str(value).strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("must be host:port, for example 127.0.0.1:8765")
    return host, int(port)


WEB_TOKEN_MIN_CHARS = 16


def _web_token(value: Any) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    if len(text) < WEB_TOKEN_MIN_CHARS or any(ch.isspace() for ch in text):
        # (The value itself is never echoed: it is a secret.)
        raise ValueError(
            f"must be at least {WEB_TOKEN_MIN_CHARS} characters without spaces, for example"
            " the output of: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return text


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return convert


def _database_url(value: Any) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    validate_database_url(text)
    return text


def _daemon_id(value: Any) -> str:
    text = str(value).strip()
    if not text or len(text) > 200 or any(ch.isspace() for ch in text):
        raise ValueError("must be 1-200 characters without spaces")
    return text


_CONVERTERS: dict[str, Any] = {
    "database_url": _database_url,
    "data_dir": lambda v: Path(str(v)).expanduser(),
    "daemon_id": _daemon_id,
    "log_format": _choice(LOG_FORMATS),
    "log_level": _choice(LOG_LEVELS),
    "pool_min_size": _positive_int,
    "pool_max_size": _positive_int,
    "connect_timeout_s": _non_negative_float,
    "connect_wait_s": _non_negative_float,
    "queue_max_events": _positive_int,
    "queue_batch_size": _positive_int,
    "queue_flush_delay_ms": _non_negative_float,
    "queue_lanes": _positive_int,
    "drain_timeout_s": _non_negative_float,
    "crash_loop_max_restorations": _positive_int,
    "crash_loop_window_s": _non_negative_float,
    "capacity": _positive_int,
    "heartbeat_interval_s": _positive_float,
    "claim_interval_s": _positive_float,
    "lease_s": _positive_float,
    "release_on_stop": _boolean,
    "poll_interval_s": _positive_float,
    "task_timeout_s": _positive_float,
    "webhook_url": _webhook_url,
    "webhook_use_proxy": _boolean,
    "agent_env": _names,
    "metrics_address": _address,
    "metrics_refresh_s": _positive_float,
    "web_address": web_address,
    "web_token": _web_token,
    "history_tail": _positive_int,
    "retention_days": _retention_days,
}


def validate_database_url(url: str) -> None:
    """Reject what asyncpg would choke on later, without echoing the URL (secrets)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a non-numeric port
    except ValueError as exc:
        raise ValueError("is not a valid URL") from exc
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError("must start with postgresql:// or postgres://")
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("names no host (postgresql://user:password@host:port/dbname)")


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Defaults < TOML file < environment. Raises ConfigError naming the bad setting."""
    env = os.environ if environ is None else environ
    raw: dict[str, tuple[str, Any]] = {}  # name -> (where it came from, value)

    file_name = config_file or (
        Path(env[f"{ENV_PREFIX}CONFIG"]) if env.get(f"{ENV_PREFIX}CONFIG") else None
    )
    if file_name is not None:
        for key, value in _read_toml(file_name).items():
            if key not in _CONVERTERS:
                raise ConfigError(f"{file_name}: unknown setting {key!r}")
            raw[key] = (f"{file_name}: {key}", value)

    for key in _CONVERTERS:
        env_name = f"{ENV_PREFIX}{key.upper()}"
        if env_name in env:
            raw[key] = (env_name, env[env_name])

    credential = _read_credential(env, DATABASE_URL_CREDENTIAL)
    if credential is not None:
        if env.get(f"{ENV_PREFIX}DATABASE_URL", "").strip():
            # Two sources that may disagree: which one wins would be a guess.
            raise ConfigError(
                f"the database URL is given twice: as {ENV_PREFIX}DATABASE_URL and as the"
                f" credential {DATABASE_URL_CREDENTIAL!r}; keep one"
            )
        raw["database_url"] = (f"credential {DATABASE_URL_CREDENTIAL!r}", credential)

    values: dict[str, Any] = {}
    for key, (origin, value) in raw.items():
        try:
            values[key] = _CONVERTERS[key](value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{origin} {exc}") from None

    settings = Settings(**values)
    if settings.pool_min_size > settings.pool_max_size:
        raise ConfigError(
            f"{ENV_PREFIX}POOL_MIN_SIZE ({settings.pool_min_size}) is larger than "
            f"{ENV_PREFIX}POOL_MAX_SIZE ({settings.pool_max_size})"
        )
    return settings


def _read_credential(env: Mapping[str, str], name: str) -> str | None:
    """The systemd credential `name` (whitespace around it removed), or None when the
    process was given no credentials directory or no such credential."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"credential {name!r} ({path}) cannot be read: {reason}") from None
    if not text:
        # An empty credential is a mistake, not a request for the embedded database.
        raise ConfigError(f"credential {name!r} ({path}) is empty")
    return text


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    # Settings may sit at the top level or under a [supervisor_daemon] table.
    section = document.get("supervisor_daemon", document)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [supervisor_daemon] must be a table")
    return section


def resolve_daemon_id(settings: Settings) -> str:
    """The configured id, else one generated once and kept in the data directory.

    A daemon id must survive restarts (it owns supervisors across them), so a generated
    id is written to `data_dir/daemon-id` and read back on every later start.
    """
    if settings.daemon_id:
        return settings.daemon_id
    ensure_data_dir(settings.data_dir)
    id_file = settings.data_dir / "daemon-id"
    try:
        existing = id_file.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    new_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    id_file.write_text(new_id + "\n")
    return new_id
