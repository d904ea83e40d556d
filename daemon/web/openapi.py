"""The OpenAPI 3.1 document of the JSON API, served at /api/openapi.json.

Written out rather than generated: it is the contract programs rely on, and a test
checks that every API route is in it and every path in it is a route.
"""

from __future__ import annotations

from typing import Any

from daemon import __version__
from daemon.models import PHASES, QuestionType, SupervisorStateKind

_ID = {"type": "string", "description": "a UUID, or a unique prefix of at least 4 hex digits"}
_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "malformed id, parameter or body",
        401: "a token is set and the Authorization: Bearer header is missing or wrong",
        404: "no such supervisor or question",
        409: "answered already, or an id prefix shared by several (`candidates`)",
        415: "the body is not application/json",
        422: "the answer is not among the question's choices (`choices`)",
        503: "the database cannot be reached now",
    }
    return {str(code): _json(_ref("Error"), reasons[code]) for code in (401, *codes, 503)}


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ID}


_PAGING = [
    {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1},
     "description": "only entries before this position (the `older` of the previous page)"},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                  "maximum": 1000, "default": 50}},
]  # fmt: skip

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "candidates": {"type": "array", "items": {"type": "string"}},
            "choices": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Question": {
        "type": "object",
        "description": "a pending question, with its supervisor",
        "properties": {
            "id": _UUID, "supervisorId": _UUID, "contractId": _UUID,
            "question": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "string"}},
            "context": {"type": ["string", "null"]},
            "questionType": {"enum": [t.value for t in QuestionType]},
            "askedAt": _TIME, "phase": {"enum": list(PHASES)},
            "supervisorState": {"enum": [s.value for s in SupervisorStateKind]},
            "ownerDaemonId": {"type": ["string", "null"]},
            "answer": {"type": ["string", "null"],
                       "description": "recorded, not yet applied by the owning daemon"},
            "answeredBy": {"type": ["string", "null"]}, "answeredAt": _NULLABLE_TIME,
        },
    },
    "Answer": {
        "type": "object",
        "required": ["answer"],
        "properties": {
            "answer": {"type": "string",
                       "description": "a choice, its number (1 = the first), or free text"},
            "by": {"type": ["string", "null"], "description": "who answers (recorded)"},
        },
    },
    "AnswerReceipt": {
        "type": "object",
        "properties": {"questionId": _UUID, "supervisorId": _UUID,
                       "answer": {"type": "string"}, "answeredBy": {"type": ["string", "null"]}},
    },
    "Supervisor": {
        "type": "object",
        "description": "a supervisor_states row without its conversation (paged apart)",
        "properties": {
            "id": _UUID, "contractId": _UUID, "taskId": _UUID,
            "state": {"enum": [s.value for s in SupervisorStateKind]},
            "phase": {"enum": list(PHASES)}, "progress": {"type": "integer"},
            "currentActivity": {"type": ["string", "null"]},
            "errorMessage": {"type": ["string", "null"]},
            "pendingQuestions": {"type": "array"}, "pendingTaskIds": {"type": "array"},
            "spawnedTaskIds": {"type": "array"}, "restorationCount": {"type": "integer"},
            "lastRestoredAt": _NULLABLE_TIME,
            "restorationSource": {"type": ["string", "null"]},
            "ownerDaemonId": {"type": ["string", "null"]}, "ownerEpoch": {"type": "integer"},
            "agent": {"type": ["string", "null"]}, "createdAt": _TIME, "updatedAt": _TIME,
            "lastActivity": _TIME,
        },
    },
    "SupervisorPage": {
        "allOf": [_ref("Supervisor"), {"type": "object", "properties": {
            "conversationLength": {"type": "integer"},
            "tasks": {"type": "array", "items": {"type": "object"}},
            "questions": {"type": "array", "items": _ref("Question")},
            "journal": _ref("JournalPage"),
        }}],
    },
    "JournalPage": {
        "type": "object",
        "properties": {"entries": {"type": "array", "items": {"type": "object"}},
                       "length": {"type": "integer"}, "older": {"type": ["integer", "null"]}},
    },
    "ConversationPage": {
        "type": "object",
        "properties": {"messages": {"type": "array", "items": {"type": "object"}},
                       "length": {"type": "integer"}, "older": {"type": ["integer", "null"]}},
    },
    "Restoration": {
        "type": "object",
        "description": "the outcome of a manual restoration and the context its agent gets",
        "properties": {
            "supervisorId": _UUID, "outcome": {"enum": ["restored", "new", "blocked", "failed"]},
            "action": {"type": "string"}, "validation": {"type": "object"},
            "context": {"type": "object", "description": "SupervisorRestorationContext, with "
                        "restorationContextMessage, pendingQuestions, awaitedTaskIds, warnings"},
        },
    },
    "Daemon": {"type": "object", "properties": {
        "id": {"type": "string"}, "hostname": {"type": "string"}, "pid": {"type": "integer"},
        "version": {"type": "string"}, "alive": {"type": "boolean"},
        "leaseExpiresAt": _TIME, "heartbeatAt": _TIME, "startedAt": _TIME,
        "stoppedAt": _NULLABLE_TIME, "capacity": {"type": ["integer", "null"]},
        "supervisors": {"type": "integer"}, "unfinished": {"type": "integer"},
    }},
}  # fmt: skip


def document() -> dict[str, Any]:
    sid, qid = _path_id("supervisor_id"), _path_id("question_id")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "supervisor-daemon",
            "version": __version__,
            "description": "Questions and supervisors, for programs. See docs/api.md.",
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"token": []}],
        "paths": {
            "/api/questions": {"get": {
                "summary": "pending questions, oldest first",
                "responses": {"200": _json({"type": "array", "items": _ref("Question")}, "ok"),
                              **_errors()},
            }},
            "/api/questions/{question_id}/answer": {"post": {
                "summary": "answer a question (the rules of `supervisor-daemon answer`)",
                "parameters": [qid],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("Answer")}}},
                "responses": {"200": _json(_ref("AnswerReceipt"), "recorded"),
                              **_errors(400, 404, 409, 415, 422)},
            }},
            "/api/supervisors": {"get": {
                "summary": "supervisors, newest first, with counts per state",
                "parameters": [
                    {"name": "state", "in": "query",
                     "schema": {"enum": [s.value for s in SupervisorStateKind]}},
                    {"name": "phase", "in": "query", "schema": {"enum": list(PHASES)}},
                    {"name": "daemon", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                ],
                "responses": {"200": _json({"type": "object", "properties": {
                    "supervisors": {"type": "array", "items": _ref("Supervisor")},
                    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                }}, "ok"), **_errors(400)},
            }},
            "/api/supervisors/{supervisor_id}": {"get": {
                "summary": "one supervisor: state, tasks, pending questions, newest journal",
                "parameters": [sid],
                "responses": {"200": _json(_ref("SupervisorPage"), "ok"),
                              **_errors(400, 404, 409)},
            }},
            "/api/supervisors/{supervisor_id}/conversation": {"get": {
                "summary": "the conversation, newest first, a page at a time",
                "parameters": [sid, *_PAGING],
                "responses": {"200": _json(_ref("ConversationPage"), "ok"),
                              **_errors(400, 404, 409)},
            }},
            "/api/supervisors/{supervisor_id}/journal": {"get": {
                "summary": "the event journal, newest first, a page at a time",
                "parameters": [sid, *_PAGING],
                "responses": {"200": _json(_ref("JournalPage"), "ok"),
                              **_errors(400, 404, 409)},
            }},
            "/api/supervisors/{supervisor_id}/restore": {"post": {
                "summary": "restore now (source manual); unparks a blocked supervisor",
                "parameters": [sid],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                "responses": {"200": _json(_ref("Restoration"), "restored (or parked again)"),
                              **_errors(400, 404, 409, 415)},
            }},
            "/api/daemons": {"get": {
                "summary": "registered daemons: lease, capacity, supervisors owned",
                "responses": {"200": _json({"type": "array", "items": _ref("Daemon")}, "ok"),
                              **_errors()},
            }},
            "/api/openapi.json": {"get": {
                "summary": "this document", "responses": {"200": {"description": "ok"}},
            }},
        },
    }  # fmt: skip
