-- save_supervisor_state_full --
-- Create a supervisor with its whole state: a brand-new row, no owner, no journal yet; nothing when the id exists (a supervisor that exists changes only through apply_batch, restoration and claims, under its epoch)
-- Not an event and not fenced, by design: a row that did not exist has no owner and
-- no epoch a write could be fenced by, and ON CONFLICT DO NOTHING leaves every row that
-- does exist as it is. Its journal starts with the first event its owner writes.
INSERT INTO supervisors (
    id, contract_id, task_id, pending_task_ids, phase, last_activity, state,
    current_activity, progress, error_message, pending_questions, restoration_count,
    last_restored_at, restoration_source, agent
) VALUES (
    $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15
)
ON CONFLICT (id) DO NOTHING
RETURNING id

-- set_new_supervisor_history_and_tasks --
-- The history ($2) and spawned task ids ($3) of a supervisor save_supervisor_state_full has just inserted, in its transaction, as rows (functions of 20260901000000_what_grows_as_rows.sql); nothing for a supervisor with a journal, messages or tasks already
SELECT supervisor_history_set(s.id, $2::jsonb), supervisor_spawned_set(s.id, $3::uuid[])
FROM supervisors s
WHERE s.id = $1 AND s.owner_daemon_id IS NULL AND s.last_event_seq = 0
  AND s.message_seq = 0 AND s.task_seq = 0

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
