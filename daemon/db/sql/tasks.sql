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
