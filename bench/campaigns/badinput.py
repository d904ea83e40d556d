"""Bad input: protocol lines, CLI arguments and corrupted rows, while a load runs beside.

Fuzz supervisors are driven by the agent in `fuzz` mode, each sending its share of the
hypothesis-generated lines (bench/campaigns/fuzz.py) one at a time and recording each
reply. Meanwhile people's commands are run with generated arguments (in process
through `daemon.cli.main`, and a few as real processes), aimed now and then at real
questions, tasks and supervisors. Then rows that break every rule of
`supervisor_states` are written through it, as another tool would (the CHECK
constraints of the table behind it dropped first: this throwaway database stands for
one another tool wrote into) while
the daemon runs, and once more the daemon restarts over them.

What must hold: the daemon never exits unless told to; every line gets its reply;
a CLI command exits 0, 1 or 2 with no traceback; each bad row gets an outcome that
names its issues (parked, a checkpoint, or a fresh start, per the restoration
protocol) and the load supervisors are acknowledged throughout.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from bench.campaigns import fuzz
from bench.campaigns.cluster import ROOT, Server, until
from bench.campaigns.rig import Rig, rig
from daemon.cli import entry as cli
from daemon.services import Services
from daemon.store import Stores

STALL_S = 30.0  # no reply to a line for this long: the line hangs its agent
SKIPPED_COMMANDS = {"run", "web", "migrate"}  # they serve, or change the schema
FINISHED = ("completed", "failed", "blocked")


def _fuzz_progress(directory: Path) -> dict[str, tuple[int, bool]]:
    """Per fuzz supervisor: replies received, and whether it is done."""
    found: dict[str, tuple[int, bool]] = {}
    for path in directory.glob("*.jsonl"):
        text = path.read_text(encoding="utf-8", errors="replace")
        found[path.stem] = (text.count('"k": "fuzz"'), '"k": "fuzz_done"' in text)
    return found


async def _send_lines(w: Rig, lines: list[bytes], fuzzers: int) -> Path:
    directory = w.root / "fuzz-ledger"
    directory.mkdir()
    services = Services(Stores.over(w.db))
    for n in range(fuzzers):
        share = w.root / f"lines-{n}.bin"
        share.write_bytes(b"\n".join(lines[n::fuzzers]) + b"\n")
        await services.create_supervisor(agent=w.agent("fuzz", share, ledger_dir=directory))
    return directory


def _run_in_process(argv: list[str]) -> tuple[int | str, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code: int | str = cli.main(argv)
        except SystemExit as exc:  # argparse: bad usage
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - what is measured: it must not happen
            code = f"raised {type(exc).__name__}: {exc}"
    return code, out.getvalue()


async def _known(w: Rig) -> dict[str, list[str]]:
    fuzzed = "SELECT id::text FROM supervisor_states WHERE NOT (id = ANY ($1::uuid[]))"
    questions = [str(q.question.id) for q in await w.operator.services.pending_questions()] \
        if w.operator is not None else []  # fmt: skip
    return {
        "questions": questions,
        "tasks": [r[0] for r in await w.db.fetch("SELECT id::text FROM supervisor_tasks")],
        "supervisors": [r[0] for r in await w.db.fetch(fuzzed, list(w.load))],
    }


async def _cli(w: Rig, count: int, seed: int) -> dict[str, Any]:
    """Generated arguments, run in process (a thread) and a few as real processes."""
    known = await _known(w)
    argvs = [
        argv for argv in fuzz.generate(fuzz.cli_arguments(lambda: known), count, seed)
        if not (argv and argv[0] in SKIPPED_COMMANDS) and "follow" not in argv
    ]  # fmt: skip
    codes: Counter[str] = Counter()
    failures: list[str] = []
    saved = dict(os.environ)
    os.environ["SUPERVISOR_DAEMON_DATABASE_URL"] = w.dsn
    os.environ["SUPERVISOR_DAEMON_DATA_DIR"] = str(w.root / "cli-data")
    try:
        for argv in argvs:
            code, output = await anyio.to_thread.run_sync(_run_in_process, argv)
            codes[str(code)] += 1
            if code not in (0, 1, 2) or "Traceback" in output:
                failures.append(f"{argv!r} -> {code}: {output[-300:]}")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    env = {**saved, "SUPERVISOR_DAEMON_DATABASE_URL": w.dsn}
    for argv in argvs[:5]:
        done = await anyio.run_process(
            [sys.executable, "-m", "daemon", *argv], env=env, cwd=ROOT, check=False
        )
        codes[f"process {done.returncode}"] += 1
        if done.returncode not in (0, 1, 2) or b"Traceback" in done.stderr:
            failures.append(f"process {argv!r} -> {done.returncode}: {done.stderr[-300:]!r}")
    return {"cli_arguments": len(argvs) + min(5, len(argvs)), "cli_exit_codes": dict(codes),
            "cli_failures": failures}  # fmt: skip


async def _corrupt_rows(w: Rig, count: int, seed: int) -> dict[uuid.UUID, str]:
    """Rows that break the rules, written as another tool would; each one's state."""
    for constraint in ("state", "progress", "restoration_count"):
        await w.db.execute(
            f"ALTER TABLE supervisors DROP CONSTRAINT supervisor_states_{constraint}_check"
        )
    made: dict[uuid.UUID, str] = {}
    drawn: list[dict[str, Any]] = fuzz.generate(fuzz.rows, count, seed)
    for row in drawn:
        sid = uuid.uuid4()
        spawned = [uuid.uuid4() for _ in range(row["spawned"])]
        awaited = spawned[: row["awaited"]] + [uuid.uuid4()] * max(0, row["awaited"] - len(spawned))
        agent = None if row["restoration_count"] % 2 else f"cmd:/nonexistent/agent-{sid}"
        await w.db.execute(
            "INSERT INTO supervisor_states (id, contract_id, task_id, phase, state, progress,"
            " error_message, pending_questions, conversation_history, spawned_task_ids,"
            " pending_task_ids, restoration_count, agent) VALUES ($1, $2, $3, $4, $5, $6, $7,"
            " $8::text::jsonb, $9::text::jsonb, $10, $11, $12, $13)",
            sid, uuid.uuid4(), uuid.uuid4(), row["phase"], row["state"], row["progress"],
            row["error_message"], row["pending_questions"], row["conversation_history"],
            spawned, awaited, row["restoration_count"], agent,
        )  # fmt: skip
        for task_id, status in zip(spawned, row["tasks"], strict=False):
            await w.db.execute(
                "INSERT INTO supervisor_tasks (id, supervisor_id, status, spec)"
                " VALUES ($1, $2, $3, '{\"note\": \"no command\"}')",
                task_id, sid, status,
            )  # fmt: skip
        if row["checkpoint"] is not None:
            snapshot = row["checkpoint"]
            if snapshot == "valid":
                snapshot = json.dumps({
                    "state": "working", "phase": "plan", "progress": 10, "error_message": None,
                    "current_activity": None, "conversation_history": [],
                    "pending_questions": [], "pending_task_ids": [], "spawned_task_ids": [],
                })  # fmt: skip
            await w.db.execute(
                "INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot)"
                " VALUES ($1, 'plan', $2::text::jsonb)",
                sid, snapshot,
            )  # fmt: skip
        made[sid] = row["state"]
    return made


def _row_outcomes(w: Rig, bad: dict[uuid.UUID, str]) -> dict[str, Any]:
    """Each bad row's outcome, from the daemons' log lines (the latest per row). A row
    written as completed, failed or blocked is finished or parked already: no daemon
    claims it, which is its outcome."""
    latest: dict[str, dict[str, Any]] = {}
    names = {str(s) for s, state in bad.items() if state not in FINISHED}
    for d in w.daemons:
        for line in d.all_lines:
            if line.get("supervisor_id") in names and line.get("event") in (
                "supervisor.restored", "supervisor.new", "supervisor.restore_skipped"
            ):  # fmt: skip
                latest[line["supervisor_id"]] = line
    outcomes: Counter[str] = Counter({"left alone (finished or parked)": len(bad) - len(names)})
    unnamed = 0
    for line in latest.values():
        if line["event"] == "supervisor.new":  # valid, and never ran: started
            outcomes["new: started"] += 1
            continue
        action = line.get("action") or line["event"]
        outcomes[f"{line.get('outcome')}: {action}"] += 1
        if action != "proceed" and not line.get("issues"):
            unnamed += 1
    return {"rows": len(bad), "row_outcomes": dict(outcomes), "rows_without_outcome":
            len(names - set(latest)), "rows_invalid_without_issue": unnamed}  # fmt: skip


async def _wait_fuzzers(w: Rig, directory: Path, fuzzers: int) -> dict[str, Any]:
    """Until every fuzz agent is done; a reply that does not come within STALL_S is a
    hung request (the agent waits for it for ever)."""
    last_change = time.monotonic()
    seen: dict[str, tuple[int, bool]] = {}
    while True:
        progress = _fuzz_progress(directory)
        if progress != seen:
            seen, last_change = progress, time.monotonic()
        if len(seen) == fuzzers and all(done for _, done in seen.values()):
            return {"hung": 0}
        if time.monotonic() - last_change > STALL_S:
            return {"hung": sum(1 for _, done in seen.values() if not done)}
        if not w.daemons[0].running:
            return {"hung": 0, "stopped": True}
        await anyio.sleep(0.2)


async def run(
    server: Server, root: Path, seed: int, *, lines: list[bytes], fuzzers: int, cli_count: int,
    rows: int, load: int, interval_ms: int,
) -> dict[str, Any]:  # fmt: skip
    async with rig(server, root, "badinput", seed) as w:
        await w.add_load(load, interval_ms)
        d = w.daemon("badinput")
        await d.start(w.tg)
        await d.wait_for("daemon.ready")
        directory = await _send_lines(w, lines, fuzzers)
        waited = await _wait_fuzzers(w, directory, fuzzers)
        replies = sum(n for n, _ in _fuzz_progress(directory).values())
        cli_result = await _cli(w, cli_count, seed)
        started = time.time()
        bad = await _corrupt_rows(w, rows, seed)
        await until(
            lambda: not (_row_outcomes(w, bad)["rows_without_outcome"] and d.running),
            60, "an outcome for every bad row", poll_s=0.2,
        )  # fmt: skip
        await w.wait_for_acks(started)
        # Once more from a start: the bad rows are restored before `ready`.
        d.signal(signal.SIGTERM)
        stopped = await d.wait_exit()
        await d.start(w.tg)
        await d.wait_for("daemon.ready")
        await w.wait_for_acks(time.time())
        d.signal(signal.SIGTERM)
        final = await d.wait_exit()
        found = await w.verify()
        crashes = [code for code in d.exits if code != 0]
        return {
            "bad_inputs": replies + cli_result["cli_arguments"] + rows,
            "protocol_lines": len(lines), "protocol_replies": replies,
            "hung_requests": waited["hung"], **cli_result, **_row_outcomes(w, bad),
            "daemon_crashes_from_bad_input": len(crashes), "exit_codes": d.exits,
            "orderly_stops": [stopped, final],
            "acked_events": found.acked, "lost_acked_events": found.lost,
            "duplicate_events": found.duplicates,
        }  # fmt: skip
