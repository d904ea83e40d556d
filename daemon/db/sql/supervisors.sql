-- save_supervisor_state_full --
-- Insert a supervisor's whole state, or overwrite every state column of an existing one
INSERT INTO supervisor_states (
    id, contract_id, task_id, conversation_history, pending_task_ids, phase,
    last_activity, state, current_activity, progress, error_message, spawned_task_ids,
    pending_questions, restoration_count, last_restored_at, restoration_source, agent
) VALUES (
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17
)
ON CONFLICT (id) DO UPDATE SET
    contract_id = EXCLUDED.contract_id,
    task_id = EXCLUDED.task_id,
    conversation_history = EXCLUDED.conversation_history,
    pending_task_ids = EXCLUDED.pending_task_ids,
    phase = EXCLUDED.phase,
    last_activity = EXCLUDED.last_activity,
    state = EXCLUDED.state,
    current_activity = EXCLUDED.current_activity,
    progress = EXCLUDED.progress,
    error_message = EXCLUDED.error_message,
    spawned_task_ids = EXCLUDED.spawned_task_ids,
    pending_questions = EXCLUDED.pending_questions,
    restoration_count = EXCLUDED.restoration_count,
    last_restored_at = EXCLUDED.last_restored_at,
    restoration_source = EXCLUDED.restoration_source,
    agent = EXCLUDED.agent,
    updated_at = now()
RETURNING *

-- get_supervisor --
-- One supervisor's row, or nothing
SELECT * FROM supervisor_states WHERE id = $1

-- get_supervisor_state_for_restoration --
-- One supervisor's full row as restoration reads it
SELECT * FROM supervisor_states WHERE id = $1

-- list_supervisors --
-- Every supervisor, newest first, optionally only those in one state
SELECT * FROM supervisor_states
WHERE ($1::text IS NULL OR state = $1)
ORDER BY created_at DESC, id
LIMIT $2

-- update_supervisor_detailed_state --
-- Change state, activity, progress and error message; NULL leaves a column as it is
UPDATE supervisor_states SET
    state = COALESCE($2, state),
    current_activity = COALESCE($3, current_activity),
    progress = COALESCE($4, progress),
    error_message = COALESCE($5, error_message),
    last_activity = now(),
    updated_at = now()
WHERE id = $1
RETURNING *

-- add_supervisor_spawned_task --
-- Record a spawned task (once), and await it when $3; atomic under concurrent writers
UPDATE supervisor_states SET
    spawned_task_ids = CASE WHEN $2 = ANY (spawned_task_ids) THEN spawned_task_ids
                            ELSE array_append(spawned_task_ids, $2) END,
    pending_task_ids = CASE WHEN NOT $3 OR $2 = ANY (pending_task_ids) THEN pending_task_ids
                            ELSE array_append(pending_task_ids, $2) END,
    last_activity = now(),
    updated_at = now()
WHERE id = $1
RETURNING id

-- add_supervisor_pending_question --
-- Append a question (once, by id) and mark the supervisor waiting for its user
UPDATE supervisor_states SET
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
UPDATE supervisor_states SET
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
UPDATE supervisor_states SET
    restoration_count = restoration_count + 1,
    last_restored_at = now(),
    restoration_source = $2,
    updated_at = now()
WHERE id = $1
RETURNING restoration_count

-- get_supervisors_with_pending_questions --
-- Every supervisor that still waits on at least one question
SELECT * FROM supervisor_states
WHERE pending_questions <> '[]'::jsonb
ORDER BY id

-- validate_spawned_tasks --
-- Each spawned task id of a supervisor with whether its task row exists
SELECT spawned.task_id, (t.id IS NOT NULL) AS task_exists
FROM supervisor_states s
CROSS JOIN LATERAL unnest(s.spawned_task_ids) AS spawned(task_id)
LEFT JOIN supervisor_tasks t ON t.id = spawned.task_id
WHERE s.id = $1

-- update_supervisor_phase --
-- Move a supervisor to another phase
UPDATE supervisor_states SET
    phase = $2,
    last_activity = now(),
    updated_at = now()
WHERE id = $1
RETURNING *

-- update_supervisor_heartbeat_state --
-- A heartbeat: the supervisor is alive; state, activity and progress when given
UPDATE supervisor_states SET
    state = COALESCE($2, state),
    current_activity = COALESCE($3, current_activity),
    progress = COALESCE($4, progress),
    last_activity = now(),
    updated_at = now()
WHERE id = $1
RETURNING id

-- save_checkpoint --
-- Snapshot a supervisor's current row as a checkpoint of its current phase
INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot, event_seq)
SELECT id, phase, to_jsonb(s) - 'owner_daemon_id' - 'owner_epoch', last_event_seq
FROM supervisor_states s
WHERE id = $1
RETURNING id

-- latest_checkpoint --
-- The newest checkpoint of a supervisor
SELECT id, supervisor_id, phase, snapshot, event_seq, created_at
FROM supervisor_checkpoints
WHERE supervisor_id = $1
ORDER BY id DESC
LIMIT 1

-- owned_supervisors --
-- The unfinished supervisors this daemon owns (only those of $2 when given), with their state
SELECT * FROM supervisor_states
WHERE owner_daemon_id = $1 AND state NOT IN ('completed', 'failed', 'blocked')
  AND ($2::uuid[] IS NULL OR id = ANY ($2::uuid[]))
ORDER BY created_at, id
