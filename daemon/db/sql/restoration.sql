-- claim_custom_plans --
-- For the claim's transaction: plan the claim for the dead daemons it is given ($5), whose supervisors an index finds, rather than with a generic plan that expects any of them to own a share of the table
SET LOCAL plan_cache_mode = force_custom_plan

-- claim_supervisors --
-- Take ownership (epoch + 1) for daemon $1 (token $4), only while its own lease is live: when $3 (a start, or a lease regained) its own unfinished supervisors, up to its capacity $2; and unowned supervisors and orphans of the daemons $5 (stopped, or whose lease expired: dead_daemons), up to a fair share (the unfinished supervisors divided by the daemons alive, less what it owns) and its room under the capacity; returns each with its new epoch and previous owner
-- The common round finds nothing to take, and costs two index lookups: the counts
-- behind the fair share (a scan of every supervisor) are made only when there is a
-- candidate.
WITH me AS (
    SELECT id FROM daemons
    WHERE id = $1 AND token IS NOT DISTINCT FROM $4 AND stopped_at IS NULL
      AND lease_expires_at > now()
),
counts AS (
    SELECT count(*) AS total, count(*) FILTER (WHERE owner_daemon_id = $1) AS mine
    FROM supervisors
    WHERE state NOT IN ('completed', 'failed', 'blocked')
),
alive AS (
    SELECT greatest(count(*), 1) AS daemons
    FROM daemons
    WHERE stopped_at IS NULL AND lease_expires_at > now()
),
own AS (
    SELECT s.id, s.owner_daemon_id AS previous_owner
    FROM supervisors s
    WHERE $3 AND s.owner_daemon_id = $1 AND EXISTS (SELECT 1 FROM me)
      AND s.state NOT IN ('completed', 'failed', 'blocked')
    ORDER BY s.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
-- Claimable: no owner, or a dead one; found through the owner column's index.
claimable AS (
    SELECT s.id FROM supervisors s
    WHERE (s.owner_daemon_id IS NULL OR s.owner_daemon_id = ANY ($5::text[]))
      AND s.state NOT IN ('completed', 'failed', 'blocked')
),
others AS (
    SELECT s.id, s.owner_daemon_id AS previous_owner
    FROM supervisors s
    WHERE s.id IN (SELECT id FROM claimable) AND EXISTS (SELECT 1 FROM me)
      -- Checked again on the row as locked, and on the owner as it is now: another
      -- claim may have taken the row, its daemon may have registered again.
      AND (s.owner_daemon_id IS NULL
           OR EXISTS (SELECT 1 FROM daemons d
                      WHERE d.id = s.owner_daemon_id AND d.id <> $1
                        AND (d.stopped_at IS NOT NULL OR d.lease_expires_at < now())))
      AND s.state NOT IN ('completed', 'failed', 'blocked')
    ORDER BY s.id
    LIMIT (SELECT CASE
        WHEN NOT EXISTS (SELECT 1 FROM claimable) THEN 0
        ELSE (SELECT greatest(0, least($2 - c.mine,
                                      ceil(c.total::numeric / a.daemons)::bigint - c.mine))
              FROM counts c, alive a)
        END)
    FOR UPDATE OF s SKIP LOCKED
),
candidates AS (
    SELECT * FROM own
    UNION ALL
    SELECT * FROM others
)
UPDATE supervisors s
SET owner_daemon_id = $1, owner_epoch = s.owner_epoch + 1
FROM candidates c
WHERE s.id = c.id
RETURNING s.id, s.owner_epoch, c.previous_owner

-- release_for_manual_restore --
-- An operator's restoration takes a supervisor away from its owner: a new epoch (the owner's next write is refused, and it stops the agent) and no owner (the next claim round of a daemon with room takes it); returns the new epoch and who owned it, and whether that daemon's lease was live
WITH previous AS (
    SELECT s.id, s.owner_daemon_id,
           (d.stopped_at IS NULL AND d.lease_expires_at > now()) AS owner_alive
    FROM supervisors s
    LEFT JOIN daemons d ON d.id = s.owner_daemon_id
    WHERE s.id = $1
    FOR UPDATE OF s
)
UPDATE supervisors s
SET owner_daemon_id = NULL, owner_epoch = s.owner_epoch + 1
FROM previous p
WHERE s.id = p.id
RETURNING s.owner_epoch, s.contract_id, p.owner_daemon_id AS previous_owner,
          COALESCE(p.owner_alive, false) AS owner_alive

-- load_supervisors_for_restoration --
-- The rows of some supervisors with the newest $2 messages of each (the text of a JSON array, NEWEST FIRST; NULL when none) and the database's clock
-- A backward scan of the primary key per supervisor: as cheap with 20,000 messages as
-- with 20. The messages are aggregated in the order the scan yields them (newest
-- first; jsonvalues.JsonTail reverses them): sorting them again here cost as much as the
-- scan itself. Sent as text, which the client decodes only if something reads it.
SELECT s.*, now() AS db_now, s.message_seq AS history_length,
       (SELECT json_agg(t.message)
        FROM (SELECT m.message FROM supervisor_messages m
              WHERE m.supervisor_id = s.id
              ORDER BY m.seq DESC
              LIMIT $2) AS t)::text AS history_tail
FROM supervisors s
WHERE s.id = ANY ($1::uuid[])

-- load_tasks_of_supervisors --
-- The task rows restoration checks for some supervisors: those they await and those they list without a spawn place, with status and place (every task row only for the invalid ones: load_all_tasks_of_supervisors)
-- Found through the primary key: as cheap with 10,000 spawned tasks as with none.
SELECT t.id, t.supervisor_id, t.status, t.spawn_seq
FROM supervisors s
CROSS JOIN LATERAL unnest(s.pending_task_ids || s.unrecorded_task_ids) AS w(id)
JOIN supervisor_tasks t ON t.id = w.id AND t.supervisor_id = s.id
WHERE s.id = ANY ($1::uuid[])

-- load_all_tasks_of_supervisors --
-- Every task row of some supervisors (those falling back to a checkpoint: a few), with status and place
SELECT id, supervisor_id, status, spawn_seq
FROM supervisor_tasks
WHERE supervisor_id = ANY ($1::uuid[])

-- load_checkpoints_of_supervisors --
-- The checkpoints of some supervisors, newest first per supervisor, with their positions (NULL in one written before positions, whose snapshot holds copies)
SELECT supervisor_id, id, snapshot, message_seq, task_seq
FROM supervisor_checkpoints
WHERE supervisor_id = ANY ($1::uuid[])
ORDER BY supervisor_id, id DESC

-- load_history_tails_at --
-- For (supervisor, position) pairs, the newest $3 messages up to that position (a JSON array, oldest first; NULL when none)
SELECT p.id AS supervisor_id,
       (SELECT json_agg(t.message ORDER BY t.seq)
        FROM (SELECT m.seq, m.message FROM supervisor_messages m
              WHERE m.supervisor_id = p.id AND m.seq <= p.pos
              ORDER BY m.seq DESC
              LIMIT $3) AS t) AS history_tail
FROM unnest($1::uuid[], $2::bigint[]) AS p(id, pos)

-- load_unapplied_answers --
-- Answers recorded for some supervisors that no daemon has applied yet
SELECT question_id, supervisor_id, answer, answered_by, answered_at
FROM question_answers
WHERE applied_at IS NULL AND supervisor_id = ANY ($1::uuid[])

-- apply_restorations --
-- Write the outcome of restoring many supervisors in one statement; each row names the epoch it holds, and a row whose epoch moved on (another owner) is left alone
-- A fallback (a checkpoint, or a fresh start) rewinds the supervisor to a position:
-- `he` messages and `te` spawned tasks. Its messages after `he` are deleted (the journal
-- keeps them as message_appended events) and its tasks after `te` stay as rows but are
-- no longer its spawned tasks, as when a checkpoint's copies replaced the arrays.
WITH r AS (
    SELECT *
    FROM jsonb_to_recordset($1::text::jsonb) AS r(
        id uuid, epoch bigint, restored boolean, source text, ws timestamptz, wc int,
        st text, ph text, p int, er text, a text, he bigint, te bigint, un uuid[], pq jsonb,
        pt uuid[])
),
upd AS (
    UPDATE supervisors s SET
        state = COALESCE(r.st, s.state),
        error_message = CASE WHEN r.st IS NULL THEN s.error_message ELSE r.er END,
        phase = COALESCE(r.ph, s.phase),
        progress = COALESCE(r.p, s.progress),
        -- Replaced together with the history when a checkpoint or a fresh start is restored.
        current_activity = CASE WHEN r.he IS NULL THEN s.current_activity ELSE r.a END,
        message_seq = LEAST(s.message_seq, COALESCE(r.he, s.message_seq)),
        legacy_history = CASE WHEN r.he IS NULL THEN s.legacy_history END,
        task_seq = LEAST(s.task_seq, COALESCE(r.te, s.task_seq)),
        unrecorded_task_ids = COALESCE(r.un, s.unrecorded_task_ids),
        pending_questions = COALESCE(r.pq, s.pending_questions),
        pending_task_ids = COALESCE(r.pt, s.pending_task_ids),
        restoration_count = s.restoration_count + CASE WHEN r.restored THEN 1 ELSE 0 END,
        last_restored_at = CASE WHEN r.restored THEN now() ELSE s.last_restored_at END,
        restoration_source = CASE WHEN r.restored THEN r.source ELSE s.restoration_source END,
        restoration_window_started_at = r.ws,
        restorations_in_window = r.wc,
        updated_at = now()
    FROM r
    WHERE s.id = r.id AND (r.epoch IS NULL OR s.owner_epoch = r.epoch)
    RETURNING s.id, r.he, r.te
),
cut AS (
    DELETE FROM supervisor_messages m
    USING upd u
    WHERE u.he IS NOT NULL AND m.supervisor_id = u.id AND m.seq > u.he
),
unspawned AS (
    UPDATE supervisor_tasks t SET spawn_seq = NULL
    FROM upd u
    WHERE u.te IS NOT NULL AND t.supervisor_id = u.id AND t.spawn_seq > u.te
)
SELECT id FROM upd

-- restore_copied_histories --
-- After apply_restorations rewound them to nothing: the history and spawned task ids of supervisors restored from a checkpoint written before positions (copies, in its snapshot)
SELECT count(CASE WHEN x.hist IS NOT NULL THEN supervisor_history_set(x.id, x.hist) END),
       count(CASE WHEN x.sp IS NOT NULL THEN supervisor_spawned_set(x.id, x.sp) END)
FROM jsonb_to_recordset($1::text::jsonb) AS x(id uuid, hist jsonb, sp uuid[])

-- mark_answers_applied --
-- Answers now applied to their supervisors
UPDATE question_answers SET applied_at = now()
WHERE question_id = ANY ($1::uuid[]) AND applied_at IS NULL

-- notify_questions --
-- Redeliver questions on the questions channel ($1, see store.QUESTIONS_CHANNEL), one NOTIFY per JSON body of $2, as they are
SELECT count(pg_notify($1, body))
FROM unnest($2::text[]) AS body
