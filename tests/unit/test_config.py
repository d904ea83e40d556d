"""Settings from defaults, a TOML file and the environment, validated at the edge."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from daemon.config import load_settings, resolve_daemon_id
from daemon.datadir import ensure_data_dir
from daemon.errors import ConfigError
from tests.processes import credentials_env


def test_defaults_use_the_embedded_database() -> None:
    settings = load_settings({})
    assert settings.database_url is None
    assert settings.uses_embedded_database
    assert settings.data_dir.name == "supervisor-daemon"


def test_environment_overrides_file(tmp_path: Path) -> None:
    toml = tmp_path / "daemon.toml"
    toml.write_text('[supervisor_daemon]\npool_max_size = 20\nlog_format = "console"\n')
    settings = load_settings({"SUPERVISOR_DAEMON_POOL_MAX_SIZE": "30"}, config_file=toml)
    assert settings.pool_max_size == 30
    assert settings.log_format == "console"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SUPERVISOR_DAEMON_DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL must start"),
        ({"SUPERVISOR_DAEMON_DATABASE_URL": "postgresql://u:p@h:port/db"}, "not a valid URL"),
        ({"SUPERVISOR_DAEMON_POOL_MAX_SIZE": "0"}, "POOL_MAX_SIZE must be a positive"),
        ({"SUPERVISOR_DAEMON_POOL_MAX_SIZE": "ten"}, "POOL_MAX_SIZE"),
        ({"SUPERVISOR_DAEMON_LOG_FORMAT": "xml"}, "LOG_FORMAT must be one of"),
        ({"SUPERVISOR_DAEMON_POOL_MIN_SIZE": "20"}, "larger than"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_bad_url_error_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"SUPERVISOR_DAEMON_DATABASE_URL": "postgresql://u:topsecret@h:x/db"})
    assert "topsecret" not in str(info.value)


def test_unknown_file_setting_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "daemon.toml"
    toml.write_text("pool_maxsize = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'pool_maxsize'"):
        load_settings({}, config_file=toml)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"SUPERVISOR_DAEMON_CONFIG": str(tmp_path / "nope.toml")})


def test_data_dir_is_private(tmp_path: Path) -> None:
    target = tmp_path / "state" / "supervisor-daemon"
    ensure_data_dir(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_generated_daemon_id_is_stable(tmp_path: Path) -> None:
    settings = load_settings({"SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path)})
    first = resolve_daemon_id(settings)
    assert first == resolve_daemon_id(settings)
    assert (
        resolve_daemon_id(
            load_settings(
                {
                    "SUPERVISOR_DAEMON_DATA_DIR": str(tmp_path),
                    "SUPERVISOR_DAEMON_DAEMON_ID": "d-7",
                }
            )
        )
        == "d-7"
    )


def test_agent_env_names_variables_and_never_the_daemons_secrets(tmp_path: Path) -> None:
    settings = load_settings({"SUPERVISOR_DAEMON_AGENT_ENV": " OPENAI_API_KEY, AWS_* ,,"})
    assert settings.agent_env == ("OPENAI_API_KEY", "AWS_*")
    toml = tmp_path / "daemon.toml"
    toml.write_text('agent_env = ["GIT_AUTHOR_NAME"]\nwebhook_use_proxy = true\n')
    from_file = load_settings({}, config_file=toml)
    assert (from_file.agent_env, from_file.webhook_use_proxy) == (("GIT_AUTHOR_NAME",), True)
    assert load_settings({}).webhook_use_proxy is False
    for bad, message in [
        ("SUPERVISOR_DAEMON_DATABASE_URL", "the daemon's own settings"),
        ("supervisor_daemon_*", "the daemon's own settings"),
        ("PGPASSWORD", "database password"),
        ("1ABC", "not a variable name"),
        ("A B", "not a variable name"),
        ("*", "not a variable name"),
    ]:
        with pytest.raises(ConfigError, match=f"SUPERVISOR_DAEMON_AGENT_ENV .*{message}"):
            load_settings({"SUPERVISOR_DAEMON_AGENT_ENV": bad})
    with pytest.raises(ConfigError, match="WEBHOOK_USE_PROXY must be true or false"):
        load_settings({"SUPERVISOR_DAEMON_WEBHOOK_USE_PROXY": "maybe"})


def test_the_database_url_can_be_a_systemd_credential(tmp_path: Path) -> None:
    env = credentials_env(tmp_path, "postgresql://app:cred-pw@db.internal:5432/prod")
    assert load_settings(env).database_url == "postgresql://app:cred-pw@db.internal:5432/prod"
    # It overrides the TOML file, as the environment does.
    toml = tmp_path / "daemon.toml"
    toml.write_text('database_url = "postgresql://app:file-pw@elsewhere/db"\n')
    assert load_settings(env, config_file=toml).database_url == (
        "postgresql://app:cred-pw@db.internal:5432/prod"
    )
    # An empty variable is no second source.
    env["SUPERVISOR_DAEMON_DATABASE_URL"] = ""
    assert load_settings(env).database_url == "postgresql://app:cred-pw@db.internal:5432/prod"


def test_a_credentials_directory_without_the_credential_changes_nothing(tmp_path: Path) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert load_settings(env).database_url is None
    env["SUPERVISOR_DAEMON_DATABASE_URL"] = "postgresql://u@h/db"
    assert load_settings(env).database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(
    ("credential", "variable", "message"),
    [
        ("postgresql://u:cred-pw@h/db", "postgresql://u:env-pw@h/db", "given twice"),
        ("   ", None, "is empty"),
        ("mysql://u:cred-pw@h/db", None, "credential 'database-url' must start"),
    ],
)
def test_a_bad_credential_is_refused_without_echoing_it(
    tmp_path: Path, credential: str, variable: str | None, message: str
) -> None:
    env = credentials_env(tmp_path, credential)
    if variable is not None:
        env["SUPERVISOR_DAEMON_DATABASE_URL"] = variable
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(env)
    assert "pw" not in str(info.value)


def test_an_unreadable_credential_is_a_config_error(tmp_path: Path) -> None:
    env = credentials_env(tmp_path, "postgresql://u@h/db")
    (Path(env["CREDENTIALS_DIRECTORY"]) / "database-url").unlink()
    (Path(env["CREDENTIALS_DIRECTORY"]) / "database-url").mkdir()  # read() fails: a directory
    with pytest.raises(ConfigError, match=r"credential 'database-url' .* cannot be read"):
        load_settings(env)
