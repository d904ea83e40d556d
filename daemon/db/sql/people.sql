-- supervisor_ids_in_range --
-- Supervisor ids between two bounds ($1, $2: a typed prefix padded with 0 and f), at most $3
SELECT id FROM supervisor_states WHERE id BETWEEN $1 AND $2 ORDER BY id LIMIT $3

-- task_ids_in_range --
-- Task ids between two bounds (a typed prefix padded with 0 and f), at most $3
SELECT id FROM supervisor_tasks WHERE id BETWEEN $1 AND $2 ORDER BY id LIMIT $3

-- question_ids_in_range --
-- Question ids, pending or answered, between two bounds given as canonical UUID text, at most $3
SELECT id FROM (
    SELECT q->>'id' AS id
    FROM supervisor_states s
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE WHEN jsonb_typeof(s.pending_questions) = 'array' THEN s.pending_questions
             ELSE '[]'::jsonb END) AS q
    WHERE s.pending_questions <> '[]'::jsonb AND q->>'id' BETWEEN $1::text AND $2::text
    UNION
    SELECT question_id::text FROM question_answers
    WHERE question_id BETWEEN $1::text::uuid AND $2::text::uuid
) found
ORDER BY id
LIMIT $3

-- pending_questions_for_people --
-- Every pending question (of one supervisor when $1) with its supervisor and the answer already recorded for it, if any
SELECT s.id AS supervisor_id, s.contract_id, s.phase, s.state, s.owner_daemon_id,
       q AS question, a.answer, a.answered_by, a.answered_at
FROM supervisor_states s
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(s.pending_questions) = 'array' THEN s.pending_questions
         ELSE '[]'::jsonb END) AS q
LEFT JOIN question_answers a ON a.question_id = (
    CASE WHEN q->>'id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
         THEN (q->>'id')::uuid END)
WHERE s.pending_questions <> '[]'::jsonb AND ($1::uuid IS NULL OR s.id = $1)

-- list_supervisors_for_people --
-- Supervisors without their conversation, newest first, filtered by state ($1), phase ($2) and owner ($3) when given
SELECT id, contract_id, task_id, pending_task_ids, phase, last_activity, created_at,
       updated_at, state, current_activity, progress, error_message, spawned_task_ids,
       pending_questions, restoration_count, last_restored_at, restoration_source,
       owner_daemon_id, owner_epoch, agent, last_event_seq
FROM supervisor_states
WHERE ($1::text IS NULL OR state = $1)
  AND ($2::text IS NULL OR phase = $2)
  AND ($3::text IS NULL OR owner_daemon_id = $3)
ORDER BY created_at DESC, id
LIMIT $4

-- count_supervisors_by_state --
-- How many supervisors are in each state, within a phase ($1) and an owner ($2) when given
SELECT state, count(*) AS supervisors
FROM supervisor_states
WHERE ($1::text IS NULL OR phase = $1) AND ($2::text IS NULL OR owner_daemon_id = $2)
GROUP BY state
ORDER BY state

-- supervisor_for_people --
-- One supervisor without its conversation, with how many messages its conversation holds
SELECT v.id, v.contract_id, v.task_id, v.pending_task_ids, v.phase, v.last_activity,
       v.created_at, v.updated_at, v.state, v.current_activity, v.progress, v.error_message,
       v.spawned_task_ids, v.pending_questions, v.restoration_count, v.last_restored_at,
       v.restoration_source, v.owner_daemon_id, v.owner_epoch, v.agent, v.last_event_seq,
       s.message_seq AS conversation_length
FROM supervisor_states v
JOIN supervisors s ON s.id = v.id
WHERE v.id = $1

-- conversation_page --
-- Messages of a supervisor's conversation before position $2 (its seq, from 1), newest first, at most $3
SELECT m.seq AS position, m.message
FROM supervisor_messages m
WHERE m.supervisor_id = $1 AND m.seq < $2
ORDER BY m.seq DESC
LIMIT $3

-- daemons_for_people --
-- Every registered daemon with its lease, capacity and how many supervisors it owns (all, and unfinished)
SELECT d.id, d.hostname, d.pid, d.version, d.started_at, d.heartbeat_at,
       d.lease_expires_at, d.stopped_at, d.capacity,
       (d.stopped_at IS NULL AND d.lease_expires_at > now()) AS alive,
       count(s.id) AS supervisors,
       count(s.id) FILTER (WHERE s.state NOT IN ('completed', 'failed')) AS unfinished
FROM daemons d
LEFT JOIN supervisor_states s ON s.owner_daemon_id = d.id
GROUP BY d.id
ORDER BY d.id
