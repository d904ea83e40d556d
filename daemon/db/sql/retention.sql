-- prunable_supervisors --
-- Up to $2 supervisors whose rows retention may delete: completed or failed, unchanged for $1 seconds, no question pending, not pruned since
-- A scan of supervisors (it has no index on state or updated_at, which change on every
-- save point): run once an hour, it costs milliseconds for 100,000 supervisors.
SELECT id
FROM supervisors
WHERE state IN ('completed', 'failed')
  AND updated_at < now() - make_interval(secs => $1)
  AND pending_questions = '[]'::jsonb
  AND (pruned_at IS NULL OR pruned_at < updated_at)
ORDER BY updated_at, id
LIMIT $2

-- prune_messages --
-- Delete up to $3 messages of the supervisors $1 that are still prunable after $2 seconds; how many
-- Each deleting statement checks the supervisor again and holds it (FOR SHARE) until it
-- commits: one restored by hand meanwhile (no longer completed) loses nothing more.
WITH doomed AS (
    SELECT m.supervisor_id, m.seq
    FROM supervisors s
    JOIN supervisor_messages m ON m.supervisor_id = s.id
    WHERE s.id = ANY ($1::uuid[])
      AND s.state IN ('completed', 'failed')
      AND s.updated_at < now() - make_interval(secs => $2)
      AND s.pending_questions = '[]'::jsonb
    LIMIT $3
    FOR SHARE OF s
), gone AS (
    DELETE FROM supervisor_messages m USING doomed d
    WHERE m.supervisor_id = d.supervisor_id AND m.seq = d.seq
    RETURNING 1
)
SELECT count(*) AS rows, 0::bigint AS events FROM gone

-- prune_journal --
-- Delete up to $3 journal segments of the supervisors $1 that are still prunable after $2 seconds; how many, and how many events they held
WITH doomed AS (
    SELECT e.supervisor_id, e.first_seq
    FROM supervisors s
    JOIN supervisor_events e ON e.supervisor_id = s.id
    WHERE s.id = ANY ($1::uuid[])
      AND s.state IN ('completed', 'failed')
      AND s.updated_at < now() - make_interval(secs => $2)
      AND s.pending_questions = '[]'::jsonb
    LIMIT $3
    FOR SHARE OF s
), gone AS (
    DELETE FROM supervisor_events e USING doomed d
    WHERE e.supervisor_id = d.supervisor_id AND e.first_seq = d.first_seq
    RETURNING e.last_seq - e.first_seq + 1 AS events
)
SELECT count(*) AS rows, COALESCE(sum(events), 0)::bigint AS events FROM gone

-- prune_tasks --
-- Delete up to $3 task rows of the supervisors $1 that are still prunable after $2 seconds; how many
WITH doomed AS (
    SELECT t.id
    FROM supervisors s
    JOIN supervisor_tasks t ON t.supervisor_id = s.id
    WHERE s.id = ANY ($1::uuid[])
      AND s.state IN ('completed', 'failed')
      AND s.updated_at < now() - make_interval(secs => $2)
      AND s.pending_questions = '[]'::jsonb
    LIMIT $3
    FOR SHARE OF s
), gone AS (
    DELETE FROM supervisor_tasks t USING doomed d WHERE t.id = d.id
    RETURNING 1
)
SELECT count(*) AS rows, 0::bigint AS events FROM gone

-- prune_checkpoints --
-- Delete up to $3 checkpoints of the supervisors $1 that are still prunable after $2 seconds; how many
WITH doomed AS (
    SELECT c.id
    FROM supervisors s
    JOIN supervisor_checkpoints c ON c.supervisor_id = s.id
    WHERE s.id = ANY ($1::uuid[])
      AND s.state IN ('completed', 'failed')
      AND s.updated_at < now() - make_interval(secs => $2)
      AND s.pending_questions = '[]'::jsonb
    LIMIT $3
    FOR SHARE OF s
), gone AS (
    DELETE FROM supervisor_checkpoints c USING doomed d WHERE c.id = d.id
    RETURNING 1
)
SELECT count(*) AS rows, 0::bigint AS events FROM gone

-- mark_pruned --
-- Record that the supervisors $1, still prunable after $2 seconds, have had their rows deleted (updated_at stays: it is when they finished); how many
UPDATE supervisors SET pruned_at = now()
WHERE id = ANY ($1::uuid[])
  AND state IN ('completed', 'failed')
  AND updated_at < now() - make_interval(secs => $2)
  AND pending_questions = '[]'::jsonb

-- count_prunable --
-- What pruning after $1 seconds would delete now: supervisors, messages, journal segments and their events, tasks, checkpoints
WITH c AS (
    SELECT id
    FROM supervisors
    WHERE state IN ('completed', 'failed')
      AND updated_at < now() - make_interval(secs => $1)
      AND pending_questions = '[]'::jsonb
      AND (pruned_at IS NULL OR pruned_at < updated_at)
)
SELECT (SELECT count(*) FROM c) AS supervisors,
       (SELECT count(*) FROM supervisor_messages m WHERE m.supervisor_id IN (SELECT id FROM c))
           AS messages,
       (SELECT count(*) FROM supervisor_events e WHERE e.supervisor_id IN (SELECT id FROM c))
           AS journal_segments,
       (SELECT COALESCE(sum(e.last_seq - e.first_seq + 1), 0) FROM supervisor_events e
        WHERE e.supervisor_id IN (SELECT id FROM c))::bigint AS journal_events,
       (SELECT count(*) FROM supervisor_tasks t WHERE t.supervisor_id IN (SELECT id FROM c))
           AS tasks,
       (SELECT count(*) FROM supervisor_checkpoints k WHERE k.supervisor_id IN (SELECT id FROM c))
           AS checkpoints
