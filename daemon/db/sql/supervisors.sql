-- save_supervisor_state_full --
-- Insert a supervisor's whole state, or overwrite every state column of an existing one (its history and spawned tasks follow with set_supervisor_history_and_tasks)
INSERT INTO supervisors (
    id, contract_id, task_id, pending_task_ids, phase, last_activity, state,
    current_activity, progress, error_message, pending_questions, restoration_count,
    last_restored_at, restoration_source, agent
) VALUES (
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15
)
ON CONFLICT (id) DO UPDATE SET
    contract_id = EXCLUDED.contract_id,
    task_id = EXCLUDED.task_id,
    pending_task_ids = EXCLUDED.pending_task_ids,
    phase = EXCLUDED.phase,
    last_activity = EXCLUDED.last_activity,
    state = EXCLUDED.state,
    current_activity = EXCLUDED.current_activity,
    progress = EXCLUDED.progress,
    error_message = EXCLUDED.error_message,
    pending_questions = EXCLUDED.pending_questions,
    restoration_count = EXCLUDED.restoration_count,
    last_restored_at = EXCLUDED.last_restored_at,
    restoration_source = EXCLUDED.restoration_source,
    agent = EXCLUDED.agent,
    updated_at = now()
RETURNING id

-- set_supervisor_history_and_tasks --
-- Make a supervisor's history $2 and its spawned task ids $3: appended items become rows, anything else replaces (functions of 20260901000000_what_grows_as_rows.sql)
SELECT supervisor_history_set($1, $2::jsonb), supervisor_spawned_set($1, $3::uuid[])

-- get_supervisor --
-- One supervisor's whole state (its history and spawned tasks assembled by the view), or nothing
SELECT * FROM supervisor_states WHERE id = $1

-- get_supervisor_state_for_restoration --
-- One supervisor's whole state as restoration reads it
SELECT * FROM supervisor_states WHERE id = $1

-- list_supervisors --
-- Every supervisor's whole state, newest first, optionally only those in one state
SELECT * FROM supervisor_states
WHERE ($1::text IS NULL OR state = $1)
ORDER BY created_at DESC, id
LIMIT $2

-- get_supervisor_summary --
-- One supervisor without its history or task ids (their numbers instead), or nothing
SELECT s.*, s.message_seq AS history_length,
       s.task_seq + cardinality(s.unrecorded_task_ids) AS spawned_task_count
FROM supervisors s
WHERE s.id = $1

-- list_supervisor_summaries --
-- Every supervisor, newest first, optionally only those in one state; without histories or task ids (their numbers instead)
SELECT s.*, s.message_seq AS history_length,
       s.task_seq + cardinality(s.unrecorded_task_ids) AS spawned_task_count
FROM supervisors s
WHERE ($1::text IS NULL OR state = $1)
ORDER BY created_at DESC, id
LIMIT $2

-- update_supervisor_detailed_state --
-- Change state, activity, progress and error message; NULL leaves a column as it is; returns the whole state
WITH u AS (
    UPDATE supervisors SET
        state = COALESCE($2, state),
        current_activity = COALESCE($3, current_activity),
        progress = COALESCE($4, progress),
        error_message = COALESCE($5, error_message),
        last_activity = now(),
        updated_at = now()
    WHERE id = $1
    RETURNING *
)
SELECT u.*, COALESCE(u.legacy_history, supervisor_history(u.id)) AS conversation_history,
       supervisor_spawned_tasks(u.id) || u.unrecorded_task_ids AS spawned_task_ids
FROM u

-- add_supervisor_spawned_task --
-- Record a spawned task (once): its task row takes the next place, an id without one is kept as unrecorded; false when the supervisor does not exist (the row stays locked until the transaction ends)
SELECT supervisor_spawned_add($1, $2)

-- await_supervisor_task --
-- Await a task (once) when $3
UPDATE supervisors SET
    pending_task_ids = CASE WHEN NOT $3 OR $2 = ANY (pending_task_ids) THEN pending_task_ids
                            ELSE array_append(pending_task_ids, $2) END,
    last_activity = now(),
    updated_at = now()
WHERE id = $1
RETURNING id

-- add_supervisor_pending_question --
-- Append a question (once, by id) and mark the supervisor waiting for its user
UPDATE supervisors SET
    pending_questions = CASE
        WHEN pending_questions @> jsonb_build_array(jsonb_build_object('id', $3::text))
            THEN pending_questions
        ELSE pending_questions || jsonb_build_array($2::jsonb) END,
    state = 'waiting_for_user',
    last_activity = now(),
    updated_at = now()
WHERE id = $1
RETURNING id

-- remove_supervisor_pending_question --
-- Drop a pending question by id; a supervisor left with none stops waiting for its user
UPDATE supervisors SET
    pending_questions = (
        SELECT COALESCE(jsonb_agg(q ORDER BY ord), '[]'::jsonb)
        FROM jsonb_array_elements(pending_questions) WITH ORDINALITY AS e(q, ord)
        WHERE q->>'id' IS DISTINCT FROM $2::text),
    state = CASE
        WHEN state = 'waiting_for_user' AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(pending_questions) AS e(q)
            WHERE q->>'id' IS DISTINCT FROM $2::text)
            THEN 'working'
        ELSE state END,
    last_activity = now(),
    updated_at = now()
WHERE id = $1
  AND pending_questions @> jsonb_build_array(jsonb_build_object('id', $2::text))
RETURNING id

-- mark_supervisor_restored --
-- Count one more restoration, with its time and source
UPDATE supervisors SET
    restoration_count = restoration_count + 1,
    last_restored_at = now(),
    restoration_source = $2,
    updated_at = now()
WHERE id = $1
RETURNING restoration_count

-- get_supervisors_with_pending_questions --
-- Every supervisor that still waits on at least one question (without its history)
SELECT s.*, s.message_seq AS history_length,
       s.task_seq + cardinality(s.unrecorded_task_ids) AS spawned_task_count
FROM supervisors s
WHERE pending_questions <> '[]'::jsonb
ORDER BY id

-- validate_spawned_tasks --
-- Each spawned task id of a supervisor with whether its task row exists: its spawned task rows in order, then the ids recorded without one
(SELECT t.id AS task_id, true AS task_exists
 FROM supervisor_tasks t
 WHERE t.supervisor_id = $1 AND t.spawn_seq IS NOT NULL
 ORDER BY t.spawn_seq)
UNION ALL
SELECT u.task_id, EXISTS (SELECT 1 FROM supervisor_tasks t
                          WHERE t.id = u.task_id AND t.supervisor_id = s.id)
FROM supervisors s
CROSS JOIN LATERAL unnest(s.unrecorded_task_ids) AS u(task_id)
WHERE s.id = $1

-- update_supervisor_phase --
-- Move a supervisor to another phase; returns the whole state
WITH u AS (
    UPDATE supervisors SET
        phase = $2,
        last_activity = now(),
        updated_at = now()
    WHERE id = $1
    RETURNING *
)
SELECT u.*, COALESCE(u.legacy_history, supervisor_history(u.id)) AS conversation_history,
       supervisor_spawned_tasks(u.id) || u.unrecorded_task_ids AS spawned_task_ids
FROM u

-- update_supervisor_heartbeat_state --
-- A heartbeat: the supervisor is alive; state, activity and progress when given
UPDATE supervisors SET
    state = COALESCE($2, state),
    current_activity = COALESCE($3, current_activity),
    progress = COALESCE($4, progress),
    last_activity = now(),
    updated_at = now()
WHERE id = $1
RETURNING id

-- save_checkpoint --
-- Snapshot a supervisor's current row as a checkpoint of its current phase, with the positions of its history and spawned tasks
INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot, event_seq, message_seq,
                                    task_seq)
SELECT id, phase, to_jsonb(s) - 'owner_daemon_id' - 'owner_epoch', last_event_seq,
       message_seq, task_seq
FROM supervisors s
WHERE id = $1
RETURNING id

-- latest_checkpoint --
-- The newest checkpoint of a supervisor
SELECT id, supervisor_id, phase, snapshot, event_seq, message_seq, task_seq, created_at
FROM supervisor_checkpoints
WHERE supervisor_id = $1
ORDER BY id DESC
LIMIT 1

-- owned_supervisors --
-- The unfinished supervisors this daemon owns (only those of $2 when given), with their state: not their histories, which a running supervisor does not hold, but their lengths
SELECT s.*, s.message_seq AS history_length,
       s.task_seq + cardinality(s.unrecorded_task_ids) AS spawned_task_count
FROM supervisors s
WHERE owner_daemon_id = $1 AND state NOT IN ('completed', 'failed', 'blocked')
  AND ($2::uuid[] IS NULL OR id = ANY ($2::uuid[]))
ORDER BY created_at, id

-- list_supervisor_messages --
-- A page of a supervisor's conversation, oldest first: the newest $3 messages before sequence number $2 (NULL: the newest of all)
SELECT m.seq, m.message, m.created_at
FROM (
    SELECT seq, message, created_at
    FROM supervisor_messages
    WHERE supervisor_id = $1 AND seq < COALESCE($2::bigint, 9223372036854775807)
    ORDER BY seq DESC
    LIMIT $3
) m
ORDER BY m.seq

-- list_supervisor_messages_after --
-- A page of a supervisor's conversation, oldest first: the first $3 messages after sequence number $2
SELECT seq, message, created_at
FROM supervisor_messages
WHERE supervisor_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
