-- get_task --
-- One task row, or nothing
SELECT * FROM supervisor_tasks WHERE id = $1

-- list_tasks_for_supervisor --
-- Every task a supervisor spawned, oldest first
SELECT * FROM supervisor_tasks WHERE supervisor_id = $1 ORDER BY created_at, id

-- set_task_status --
-- Move a task to a new status (with its result when it finished) and wake its waiters; a task that already finished stays as it is
WITH changed AS (
    UPDATE supervisor_tasks SET status = $2, result = COALESCE($3, result), updated_at = now()
    WHERE id = $1 AND status NOT IN ('succeeded', 'failed', 'cancelled')
    RETURNING id, supervisor_id, status
)
SELECT c.id, c.supervisor_id, c.status,
       pg_notify('supervisor_tasks', json_build_object(
           'taskId', c.id, 'supervisorId', c.supervisor_id, 'status', c.status)::text)
FROM changed c

-- task_statuses --
-- The status of some tasks
SELECT id, status, result FROM supervisor_tasks WHERE id = ANY ($1::uuid[])

-- runnable_tasks_of_owner --
-- Command tasks of this daemon's supervisors that have not finished, oldest first, with the epoch each supervisor is owned under and the epoch each task last started under
SELECT t.id, t.supervisor_id, s.contract_id, s.owner_epoch, t.status, t.run_epoch, t.spec
FROM supervisor_tasks t
JOIN supervisors s ON s.id = t.supervisor_id
WHERE s.owner_daemon_id = $1
  AND t.status IN ('pending', 'running')
  AND t.spec ? 'command'
ORDER BY t.created_at, t.id

-- start_task --
-- Compare-and-set before a task's process starts: pending -> running (or, when $5, an idempotent task left running by an earlier epoch -> running again; a task already running under $4 is this call's own, retried) for daemon $3 owning supervisor $2 under epoch $4 with a live lease; `owned` false means the supervisor is not this daemon's under that epoch any more (or its lease lapsed), `started` false with `owned` true that the task is not pending (started by another owner, or finished)
WITH owner AS (
    SELECT s.id
    FROM supervisors s
    JOIN daemons d ON d.id = s.owner_daemon_id
    WHERE s.id = $2 AND s.owner_daemon_id = $3 AND s.owner_epoch = $4
      AND d.stopped_at IS NULL AND d.lease_expires_at > now()
    -- Taken in share mode: a claim (FOR UPDATE) of this supervisor waits for this
    -- statement or this statement for the claim, which it then sees (epoch moved).
    FOR SHARE OF s
),
-- A task already running under $4 was started by this very call, retried after a
-- commit whose reply the daemon never saw: only one daemon holds an epoch, and it asks
-- once per task. Matched in the UPDATE itself, so that a retry that waited for that
-- commit re-reads the row (READ COMMITTED) and finds it its own, not someone else's.
started AS (
    UPDATE supervisor_tasks t
    SET status = 'running', run_epoch = $4, updated_at = now(),
        runs = t.runs + CASE WHEN t.status = 'running' AND t.run_epoch = $4 THEN 0 ELSE 1 END
    FROM owner o
    WHERE t.id = $1 AND t.supervisor_id = o.id
      AND (t.status = 'pending'
           OR (t.status = 'running' AND t.run_epoch = $4)
           OR ($5 AND t.status = 'running' AND t.run_epoch IS DISTINCT FROM $4))
    RETURNING t.id, t.supervisor_id, t.status
)
SELECT EXISTS (SELECT 1 FROM owner) AS owned,
       (SELECT count(pg_notify('supervisor_tasks', json_build_object(
            'taskId', x.id, 'supervisorId', x.supervisor_id, 'status', x.status)::text))
        FROM started x) > 0 AS started

-- finish_task --
-- Write a task's outcome ($5 status, $6 result) only under the epoch it runs under ($4, daemon $3): a task running under epoch $4 (or, when $7, one that never ran here, pending or left running by an earlier owner: a spec refused) of supervisor $2 still owned under $4; wakes its waiters; `owned` false means the supervisor moved on (the outcome is not written)
WITH owner AS (
    SELECT s.id
    FROM supervisors s
    WHERE s.id = $2 AND s.owner_daemon_id = $3 AND s.owner_epoch = $4
    FOR SHARE OF s
),
changed AS (
    UPDATE supervisor_tasks t
    SET status = $5, result = COALESCE($6, t.result), updated_at = now()
    FROM owner o
    WHERE t.id = $1 AND t.supervisor_id = o.id
      AND ((t.status = 'running' AND t.run_epoch = $4)
           OR ($7 AND t.status IN ('pending', 'running')))
    RETURNING t.id, t.supervisor_id, t.status
)
SELECT EXISTS (SELECT 1 FROM owner) AS owned,
       (SELECT count(pg_notify('supervisor_tasks', json_build_object(
            'taskId', x.id, 'supervisorId', x.supervisor_id, 'status', x.status)::text))
        FROM changed x) > 0 AS finished
