"""Settings from defaults, a TOML file and the environment, validated at the edge."""

from __future__ import annotations

from pathlib import Path

from tests.processes import run_cli
from tests.unit.test_config import _credentials


def test_the_cli_reaches_the_database_named_by_the_credential(dsn: str, tmp_path: Path) -> None:
    result = run_cli("migrate", "--status", env=_credentials(tmp_path, dsn))
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout
