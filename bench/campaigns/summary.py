"""The figures of a run, its targets, and the table printed before the JSON line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# figure -> (target as printed, check) for a default run; a quick run keeps the checks
# that count failures and drops the ones that count work done.
TARGETS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "kill_cycles": (">= 100", lambda v: v >= 100),
    "db_restarts": (">= 20", lambda v: v >= 20),
    "lost_acked_events": ("0", lambda v: v == 0),
    "duplicate_events": ("0", lambda v: v == 0),
    "out_of_order": ("0", lambda v: v == 0),
    "bad_inputs": (">= 10000", lambda v: v >= 10_000),
    "daemon_crashes_from_bad_input": ("0", lambda v: v == 0),
    "bad_input_failures": ("0", lambda v: v == 0),
    "double_owned": ("0", lambda v: v == 0),
    "tasks_run_twice": ("0", lambda v: v == 0),
    "questions_not_redelivered": ("0", lambda v: v == 0),
    "answered_yet_redelivered": ("0", lambda v: v == 0),
    "stranded_supervisors": ("0", lambda v: v == 0),
    "recovery_ratio_min": (">= 0.9", lambda v: v >= 0.9),
    "daemon_exits_on_db_fault": ("0", lambda v: v == 0),
}
COUNTS = ("kill_cycles", "db_restarts", "bad_inputs")


def _total(results: dict[str, dict[str, Any]], key: str) -> int:
    return sum(int(r.get(key) or 0) for r in results.values())


def figures(results: dict[str, dict[str, Any]], db_restarts: int) -> dict[str, Any]:
    bad = results.get("badinput", {})
    asked = results.get("questions", {})
    pending = int(asked.get("questions_pending_before", 0))
    return {
        "kill_cycles": int(results.get("kills", {}).get("kill_cycles", 0)),
        "db_restarts": db_restarts,
        "acked_events": _total(results, "acked_events"),
        "lost_acked_events": _total(results, "lost_acked_events"),
        "duplicate_events": _total(results, "duplicate_events"),
        "out_of_order": _total(results, "out_of_order") + _total(results, "answers_missing"),
        "bad_inputs": int(bad.get("bad_inputs", 0)),
        "daemon_crashes_from_bad_input": int(bad.get("daemon_crashes_from_bad_input", 0)),
        "bad_input_failures": int(bad.get("hung_requests", 0))
        + len(bad.get("cli_failures", []))
        + int(bad.get("rows_without_outcome", 0))
        + int(bad.get("rows_invalid_without_issue", 0)),
        "double_owned": _total(results, "double_owned"),
        "questions_pending_before": pending,
        "questions_redelivered": int(asked.get("questions_redelivered", 0)),
        "questions_not_redelivered": pending
        - min(int(asked.get("questions_redelivered", 0)),
              int(asked.get("questions_shown_on_follow", 0))),
        "answered_yet_redelivered": int(asked.get("answered_yet_redelivered", 0))
        + int(asked.get("answered_yet_shown_on_follow", 0))
        + int(asked.get("answered_while_down", 0)) - int(asked.get("answers_applied", 0)),
        "tasks_run_twice": _total(results, "tasks_run_twice"),
        "stranded_supervisors": _total(results, "stranded_at_end"),
        "recovery_ratio_min": results.get("scenarios", {}).get("recovery_ratio_min", 0.0),
        "daemon_exits_on_db_fault": _total(results, "daemon_exits_on_db_fault"),
    }  # fmt: skip


def missed(found: dict[str, Any], campaigns: set[str], quick: bool) -> list[str]:
    """The targets this run missed (of the campaigns it ran), and the campaigns that
    failed outright."""
    needs = {
        "kill_cycles": "kills", "db_restarts": "outages", "bad_inputs": "badinput",
        "daemon_crashes_from_bad_input": "badinput", "bad_input_failures": "badinput",
        "questions_not_redelivered": "questions", "answered_yet_redelivered": "questions",
        "recovery_ratio_min": "scenarios",
    }  # fmt: skip
    out = [f"campaign {name} failed: {error}"
           for name, error in found.get("failed_campaigns", {}).items()]  # fmt: skip
    for key, (wanted, check) in TARGETS.items():
        if needs.get(key, next(iter(campaigns))) not in campaigns:
            continue
        if quick and key in COUNTS:
            continue
        if quick and key == "recovery_ratio_min":
            # A quick run's windows are too short for a ratio to mean much: recovered.
            target, ok = "> 0", found[key] > 0
        else:
            target, ok = wanted, check(found[key])
        if not ok:
            out.append(f"{key} = {found[key]} (target {target})")
    return out


def table(found: dict[str, Any], results: dict[str, dict[str, Any]], quick: bool) -> str:
    lines = [f"{'figure':<32} {'value':>12}  target"]
    for key, value in found.items():
        target = TARGETS.get(key, ("", None))[0]
        if quick and key in COUNTS:
            target = "(quick run)"
        elif quick and key == "recovery_ratio_min":
            target = "> 0 (quick run: short windows)"
        lines.append(f"{key:<32} {value!s:>12}  {target}")
    lines.append("")
    for name, result in results.items():
        lines.append(f"{name} ({result.get('seconds')} s)")
        for key, value in result.items():
            if key == "scenarios":
                for scenario, r in value.items():
                    lines.append(
                        f"    {scenario:<18} before {r['before_per_s']:>7}/s  after"
                        f" {r['after_per_s']:>7}/s  ratio {r['recovery_ratio']:<6}"
                        f" exits {r['daemon_exits']}"
                    )
            elif key != "seconds":
                lines.append(f"    {key}: {value}")
    return "\n".join(lines)
