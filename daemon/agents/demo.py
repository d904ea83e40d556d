"""The demo agent: walks a contract through plan -> implement -> review -> done.

It spawns two real shell-command tasks, waits for them, asks a phase_confirmation
question and waits for the answer. It reads where it is from its saved state, so a
restart (even a SIGKILL) resumes it where it was: tasks are not spawned twice and a
pending question is waited for, not asked again.
"""

from __future__ import annotations

from daemon.agents.supervisor import Supervisor
from daemon.models import QuestionType, SupervisorStateKind

TASKS = (
    {"command": "echo building; sleep 1; echo built"},
    {"command": "echo testing; sleep 1; echo all tests passed"},
)


async def run(sup: Supervisor) -> None:
    if sup.state.phase in ("research", "plan"):
        await sup.set_state(SupervisorStateKind.WORKING, activity="planning the contract")
        sup.report_progress(10, "planning")
        await sup.append_message({"role": "assistant", "content": "Plan: build, test, review."})
        await sup.change_phase("implement")

    if sup.state.phase == "implement":
        if not sup.state.spawned_task_count:
            await sup.report_activity("building and testing")
            for spec in TASKS:
                await sup.spawn_task(spec)
        sup.report_progress(40, "waiting for the build and the tests")
        await sup.wait_for_tasks()
        await sup.change_phase("review")

    if sup.state.phase == "review":
        sup.report_progress(80, "waiting for a go-ahead")
        pending = [q for q in sup.state.pending_questions
                   if q.question_type is QuestionType.PHASE_CONFIRMATION]  # fmt: skip
        if pending:
            answer = await sup.await_answer(pending[0].id)
        else:
            answer = await sup.ask(
                "The build and the tests passed. Ship it?", choices=("yes", "no"),
                context=f"contract {sup.state.contract_id}",
                question_type=QuestionType.PHASE_CONFIRMATION,
            )  # fmt: skip
        if answer != "yes":
            await sup.fail(f"the operator answered {answer!r}: not shipped")
            return
        await sup.change_phase("done")

    if sup.state.phase == "done":
        await sup.report_activity("shipped")
        await sup.complete()
