"""Settings from defaults, a TOML file and the environment, validated at the edge."""

from __future__ import annotations

from pathlib import Path

from tests.processes import credentials_env, run_cli


def test_the_cli_reaches_the_database_named_by_the_credential(dsn: str, tmp_path: Path) -> None:
    result = run_cli("migrate", "--status", env=credentials_env(tmp_path, dsn))
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout
