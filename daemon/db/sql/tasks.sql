-- create_task --
-- A new task row for a supervisor, pending
INSERT INTO supervisor_tasks (id, supervisor_id, status, spec)
VALUES ($1, $2, 'pending', $3)
RETURNING *

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
-- Command tasks of this daemon's supervisors that have not finished, oldest first
SELECT t.id, t.supervisor_id, s.contract_id, t.status, t.spec
FROM supervisor_tasks t
JOIN supervisors s ON s.id = t.supervisor_id
WHERE s.owner_daemon_id = $1
  AND t.status IN ('pending', 'running')
  AND t.spec ? 'command'
ORDER BY t.created_at, t.id
