"""Reliability campaigns: kill -9, database outages, bad input, questions, many daemons,
and the five fault scenarios of a public queue benchmark, each checked against a ledger
of what the daemon acknowledged.

The real daemon runs as a process (`python -m daemon run`) against a PostgreSQL the
bench starts in a temporary directory and the daemon does not own, so that killing
the daemon leaves the database running; everything is loopback (a unix socket, and a
127.0.0.1 proxy). The load comes from supervisors driven by a command agent
(bench/campaigns/agent.py) that appends every acknowledgement it receives to a ledger
file as the reply arrives; after each fault the ledgers are compared with the
journal (bench/campaigns/ledger.py). docs/reliability.md says what each campaign proves.

Usage (from the repository root):
    python -m bench.reliability [--seed N] [--quick] [--campaign NAME ...]

`--quick` runs a short version of every campaign (what `make test` runs). It prints a
table, then as its last line one JSON object with the figures; the exit status is 1
when a target was missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from bench.campaigns import badinput, fuzz, kills, multi, outages, questions, scenarios, summary
from bench.campaigns.cluster import Server
from daemon import logs


@dataclasses.dataclass
class Run:
    """What every campaign is given."""

    server: Server
    root: Path
    seed: int
    quick: bool
    lease_s: float | None  # the scenarios' daemons' lease (None: the daemon's default)
    lines: list[bytes] = dataclasses.field(default_factory=list)
    lines_ready: anyio.Event = dataclasses.field(default_factory=anyio.Event)

    async def make_lines(self) -> None:
        """The bad-input campaign's protocol lines: generated in another process while
        the campaigns before it run."""
        count = 300 if self.quick else 10_000
        self.lines = await anyio.to_process.run_sync(fuzz.protocol_lines, count, self.seed)
        self.lines_ready.set()


Campaign = Callable[[Run], Awaitable[dict[str, Any]]]


async def _kills(r: Run) -> dict[str, Any]:
    return await kills.run(
        r.server, r.root, r.seed, cycles=4 if r.quick else 100, supervisors=6 if r.quick else 12,
        idle=100 if r.quick else 300, interval_ms=50,
    )  # fmt: skip


async def _outages(r: Run) -> dict[str, Any]:
    return await outages.run(
        r.server, r.root, r.seed, restarts=2 if r.quick else 20,
        backend_kills=1 if r.quick else 10, proxy_resets=1 if r.quick else 10,
        supervisors=6 if r.quick else 12, interval_ms=50,
    )  # fmt: skip


async def _badinput(r: Run) -> dict[str, Any]:
    await r.lines_ready.wait()
    return await badinput.run(
        r.server, r.root, r.seed, lines=r.lines, fuzzers=2 if r.quick else 4,
        cli_count=20 if r.quick else 200, rows=20 if r.quick else 200, load=4, interval_ms=50,
    )  # fmt: skip


async def _questions(r: Run) -> dict[str, Any]:
    return await questions.run(
        r.server, r.root, r.seed, restarts=2 if r.quick else 5, supervisors=4 if r.quick else 8
    )


async def _multi(r: Run) -> dict[str, Any]:
    return await multi.run(
        r.server, r.root, r.seed, daemons=3, seconds=6 if r.quick else 30,
        supervisors=6 if r.quick else 12, interval_ms=50, lease_s=1.5 if r.quick else 3,
    )  # fmt: skip


async def _scenarios(r: Run) -> dict[str, Any]:
    return await scenarios.run(
        r.server, r.root, r.seed, window_s=1.5 if r.quick else 10,
        fault_s=1.5 if r.quick else 10, outage_s=1.5 if r.quick else 20,
        supervisors=6 if r.quick else 16, interval_ms=50, lease_s=r.lease_s,
    )  # fmt: skip


CAMPAIGNS: dict[str, Campaign] = {
    "kills": _kills, "outages": _outages, "badinput": _badinput, "questions": _questions,
    "multi": _multi, "scenarios": _scenarios,
}  # fmt: skip


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


async def main(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="sd-reliability-"))
    server = Server(root)
    results: dict[str, Any] = {}
    failed: dict[str, str] = {}
    started = time.monotonic()
    names = args.campaign or list(CAMPAIGNS)
    run = Run(server, root, args.seed, args.quick, args.lease_s)
    try:
        async with anyio.create_task_group() as tg:
            if "badinput" in names:
                tg.start_soon(run.make_lines)
            for name in names:
                began = time.monotonic()
                try:
                    results[name] = await CAMPAIGNS[name](run)
                except Exception as exc:  # noqa: BLE001 - reported as a missed target; go on
                    failed[name] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                    results[name] = {}
                    await server.ensure_up()
                results[name]["seconds"] = round(time.monotonic() - began, 1)
                print(f"{name}: done in {results[name]['seconds']} s", file=sys.stderr,
                      flush=True)  # fmt: skip
    finally:
        server.cleanup()
        if args.keep:
            print(f"logs and ledgers kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    found = summary.figures(results, server.restarts)
    found["failed_campaigns"] = failed
    found["targets_missed"] = summary.missed(found, set(names), args.quick)
    found.update(seed=args.seed, quick=args.quick, seconds=round(time.monotonic() - started, 1),
                 machine=machine(), campaigns=results)  # fmt: skip
    return found, results


def cli() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="a short version of each campaign")
    parser.add_argument("--campaign", action="append", choices=list(CAMPAIGNS))
    parser.add_argument("--keep", action="store_true", help="keep the logs and ledgers")
    parser.add_argument("--lease-s", type=float, default=None,
                        help="SUPERVISOR_DAEMON_LEASE_S of the five scenarios' daemons"
                        " (default: the daemon's own default)")  # fmt: skip
    args = parser.parse_args()
    # The bench's own connections meet the outages it causes: asyncpg's pool says so.
    logging.getLogger("asyncpg").setLevel(logging.CRITICAL)
    with open(os.devnull, "w") as devnull:  # the migrations' log lines
        logs.configure(log_format="json", level="warning", stream=devnull)
        found, results = anyio.run(main, args)
    hidden = ("campaigns", "machine", "seed", "quick", "seconds", "targets_missed",
              "failed_campaigns")  # fmt: skip
    shown = {k: v for k, v in found.items() if k not in hidden}
    print(summary.table(shown, results, args.quick))
    for target in found["targets_missed"]:
        print(f"MISSED: {target}")
    print(json.dumps(found))
    sys.exit(1 if found["targets_missed"] else 0)


if __name__ == "__main__":
    cli()
