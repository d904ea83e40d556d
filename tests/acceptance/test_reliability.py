"""Acceptance: the short version of every reliability campaign (bench/reliability.py).

One run of `python -m bench.reliability --quick` (about a minute and a half): the real
daemon as a process, on a PostgreSQL of the bench's own, killed, cut off from its
database, fed bad input and run three at a time; the agents' ledgers of what was
acknowledged checked against the journal after each fault. docs/reliability.md says
what each campaign proves; a default run (`python -m bench.reliability`) does the
same at full size and scores the recovery ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.acceptance
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.reliability", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: a target was missed
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _ledger_holds(campaign: dict[str, Any]) -> None:
    assert campaign["acked_events"] > 0
    assert campaign["lost_acked_events"] == 0
    assert campaign["duplicate_events"] == 0
    assert campaign.get("out_of_order", 0) == 0
    assert campaign.get("answers_missing", 0) == 0


def test_kill_9_at_any_moment_loses_and_repeats_nothing_acknowledged(
    run: dict[str, Any],
) -> None:
    kills = run["campaigns"]["kills"]
    _ledger_holds(kills)
    assert kills["kill_cycles"] == 4
    assert sum(kills["kills_landed"].values()) == 4
    assert kills["tasks_run_twice"] == 0
    assert kills["unexpected_exits"] == []


def test_database_outages_lose_nothing_and_stop_no_daemon(run: dict[str, Any]) -> None:
    outages = run["campaigns"]["outages"]
    _ledger_holds(outages)
    assert outages["db_restarts"] == 2
    assert outages["backends_killed"] > 0
    assert outages["connections_reset"] > 0
    assert outages["daemon_exits_on_db_fault"] == 0
    assert outages["tasks_run_twice"] == 0


def test_bad_input_fails_alone_and_never_takes_the_daemon_down(run: dict[str, Any]) -> None:
    bad = run["campaigns"]["badinput"]
    _ledger_holds(bad)
    assert bad["protocol_replies"] == bad["protocol_lines"] > 0
    assert bad["hung_requests"] == 0
    assert bad["cli_failures"] == []
    assert bad["rows_without_outcome"] == 0
    assert bad["rows_invalid_without_issue"] == 0
    assert bad["daemon_crashes_from_bad_input"] == 0
    assert bad["orderly_stops"] == [0, 0]


def test_pending_questions_come_back_and_answers_given_meanwhile_are_applied(
    run: dict[str, Any],
) -> None:
    asked = run["campaigns"]["questions"]
    _ledger_holds(asked)
    assert asked["questions_pending_before"] > 0
    assert asked["questions_redelivered"] == asked["questions_pending_before"]
    assert asked["questions_shown_on_follow"] == asked["questions_pending_before"]
    assert asked["answers_applied"] == asked["answered_while_down"] > 0
    assert asked["answered_yet_redelivered"] == 0
    assert asked["answered_yet_shown_on_follow"] == 0


def test_many_daemons_under_chaos_never_drive_one_supervisor_twice(run: dict[str, Any]) -> None:
    chaos = run["campaigns"]["multi"]
    _ledger_holds(chaos)
    assert chaos["double_owned"] == 0
    assert chaos["tasks_run_twice"] == 0


def test_no_daemon_exits_on_a_database_outage_longer_than_its_lease(
    run: dict[str, Any],
) -> None:
    assert run["campaigns"]["multi"]["daemon_exits_on_db_fault"] == 0


def test_the_queue_benchmark_scenarios_recover(run: dict[str, Any]) -> None:
    fleet = run["campaigns"]["scenarios"]
    _ledger_holds(fleet)
    assert set(fleet["scenarios"]) == {
        "crash_recovery", "repeated_kills", "postgres_restart", "backend_kills",
        "pool_exhaustion",
    }  # fmt: skip
    # Recovered at all (the benchmark's own criterion); a quick run's windows are too
    # short for the ratio itself, which a default run scores (docs/reliability.md).
    assert all(s["recovery_ratio"] > 0 for s in fleet["scenarios"].values())
    assert fleet["daemon_exits_on_db_fault"] == 0
    assert fleet["double_owned"] == 0
    assert run["lost_acked_events"] == 0
