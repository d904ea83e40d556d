-- The id of the newest event applied to a supervisor, in its own row: applying a batch
-- compares it with the batch's last event under the row lock, so a retry of a batch
-- whose commit the client never saw (the connection died while the server went on)
-- finds it applied and leaves it, even when that commit is still running on the
-- server when the retry starts. (A check of the journal before the retry cannot see a
-- commit that has not happened yet.)
ALTER TABLE supervisor_states ADD COLUMN last_event_id UUID;

UPDATE supervisor_states s
SET last_event_id = e.last_event_id
FROM (
    SELECT DISTINCT ON (supervisor_id) supervisor_id, last_event_id
    FROM supervisor_events
    ORDER BY supervisor_id, first_seq DESC
) e
WHERE e.supervisor_id = s.id;
