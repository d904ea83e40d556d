-- What grows with a supervisor's age is stored as rows, so that a save point costs the
-- same on a supervisor with 20,000 messages as on a new one (docs/schema.md):
-- - its conversation: one row per message in supervisor_messages (supervisor, seq);
-- - its spawned tasks: its rows in supervisor_tasks, ordered by spawn_seq;
-- - checkpoints: positions (message_seq, task_seq), not copies.
-- The table becomes `supervisors`; `supervisor_states` is now a view with every column
-- it had, conversation_history and spawned_task_ids assembled from the rows, so that
-- readers by the original names see what they saw before. Writers through the view are
-- served by INSTEAD OF triggers (an append to either column becomes inserted rows).
-- Existing arrays move into rows in place; nothing is dropped that was not copied.

ALTER TABLE supervisor_states RENAME TO supervisors;

-- message_seq: the sequence number of the newest message, which is also the history's
--   length (messages are numbered from 1 without gaps).
-- task_seq: how many tasks it has spawned (spawn_seq of the newest).
-- legacy_history: a conversation_history that is not a JSON array, as an older writer
--   left it (or one wrote through the view): kept for restoration to find and report;
--   NULL in every state the daemon writes.
-- unrecorded_task_ids: ids recorded as spawned that have no task row of this supervisor
--   (an older writer, or the original add_supervisor_spawned_task): kept so restoration
--   reports them as "spawned tasks that do not exist", as it did.
-- pruned_at: when retention deleted its messages, journal, tasks and checkpoints.
ALTER TABLE supervisors
    ADD COLUMN message_seq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN task_seq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN legacy_history JSONB,
    ADD COLUMN unrecorded_task_ids UUID[] NOT NULL DEFAULT '{}',
    ADD COLUMN pruned_at TIMESTAMPTZ;

-- json, not jsonb: a message is written on every append and read back rarely (a
-- restoration's tail, a page of read_history), so its text is checked, not parsed.
CREATE TABLE supervisor_messages (
    supervisor_id UUID NOT NULL,
    seq BIGINT NOT NULL,
    message JSON NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (supervisor_id, seq),
    CONSTRAINT supervisor_messages_seq_check CHECK (seq > 0)
);

-- spawn_seq: the task's place among its supervisor's spawned tasks (1, 2, ...); NULL for
-- a task row that is not (or no longer, after a fallback to a checkpoint) among them.
ALTER TABLE supervisor_tasks ADD COLUMN spawn_seq BIGINT;
DROP INDEX idx_supervisor_tasks_supervisor;
CREATE INDEX idx_supervisor_tasks_spawned ON supervisor_tasks (supervisor_id, spawn_seq);

-- Positions: the history up to message_seq and the spawned tasks up to task_seq. NULL in
-- a checkpoint written before, whose snapshot still holds copies (restoration reads both).
ALTER TABLE supervisor_checkpoints
    ADD COLUMN message_seq BIGINT,
    ADD COLUMN task_seq BIGINT;

-- The supervisor checks (20260701000000) name the table they read: point them at the
-- renamed one, and delete a supervisor's messages with it.
CREATE OR REPLACE FUNCTION supervisor_rows_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    me xid := pg_current_xact_id()::xid;
    wanted bigint;
    found bigint;
    missing uuid;
BEGIN
    SELECT count(DISTINCT n.supervisor_id) INTO wanted FROM new_rows n;
    -- A supervisor row this transaction wrote itself cannot be deleted by anyone else
    -- before the transaction ends, so it needs no lock. That is every row in the
    -- persistence queue's flush, which updates each supervisor it inserts rows for.
    SELECT count(*) INTO found FROM supervisors s
    WHERE s.id IN (SELECT n.supervisor_id FROM new_rows n) AND s.xmin = me;
    IF found < wanted THEN
        SELECT found + count(*) INTO found FROM (
            SELECT 1 FROM supervisors s
            WHERE s.id IN (SELECT n.supervisor_id FROM new_rows n) AND s.xmin <> me
            FOR KEY SHARE) AS l;
    END IF;
    IF found < wanted THEN
        SELECT n.supervisor_id INTO missing FROM new_rows n
        WHERE NOT EXISTS (SELECT 1 FROM supervisors s WHERE s.id = n.supervisor_id)
        LIMIT 1;
        RAISE EXCEPTION 'insert or update on table "%" violates the supervisor check', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (supervisor_id)=(%s) is not present in table "supervisors".', missing),
                  TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION supervisor_rows_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM supervisor_messages m WHERE m.supervisor_id IN (SELECT g.id FROM gone g);
    DELETE FROM supervisor_tasks t WHERE t.supervisor_id IN (SELECT g.id FROM gone g);
    DELETE FROM supervisor_checkpoints c WHERE c.supervisor_id IN (SELECT g.id FROM gone g);
    DELETE FROM question_answers a WHERE a.supervisor_id IN (SELECT g.id FROM gone g);
    RETURN NULL;
END $$;

CREATE TRIGGER supervisor_messages_inserted AFTER INSERT ON supervisor_messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION supervisor_rows_check();
CREATE TRIGGER supervisor_messages_updated AFTER UPDATE ON supervisor_messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION supervisor_rows_check();

-- -- Moving the arrays into rows ----------------------------------------------------------

INSERT INTO supervisor_messages (supervisor_id, seq, message, created_at)
SELECT s.id, e.ord, e.m::json, s.updated_at
FROM supervisors s
CROSS JOIN LATERAL jsonb_array_elements(s.conversation_history) WITH ORDINALITY AS e(m, ord)
WHERE jsonb_typeof(s.conversation_history) = 'array';

-- A spawned id with a task row of its supervisor takes the place of its first mention;
-- one without stays listed, as unrecorded.
WITH listed AS (
    SELECT s.id AS supervisor_id, u.t, min(u.ord) AS first_at
    FROM supervisors s
    CROSS JOIN LATERAL unnest(s.spawned_task_ids) WITH ORDINALITY AS u(t, ord)
    GROUP BY s.id, u.t
), placed AS (
    SELECT t.id, row_number() OVER (PARTITION BY l.supervisor_id ORDER BY l.first_at) AS seq
    FROM listed l
    JOIN supervisor_tasks t ON t.id = l.t AND t.supervisor_id = l.supervisor_id
)
UPDATE supervisor_tasks t SET spawn_seq = p.seq FROM placed p WHERE t.id = p.id;

UPDATE supervisors s SET
    message_seq = CASE WHEN jsonb_typeof(s.conversation_history) = 'array'
                       THEN jsonb_array_length(s.conversation_history) ELSE 0 END,
    legacy_history = CASE WHEN jsonb_typeof(s.conversation_history) = 'array'
                          THEN NULL ELSE s.conversation_history END,
    task_seq = (SELECT count(*) FROM supervisor_tasks t
                WHERE t.supervisor_id = s.id AND t.spawn_seq IS NOT NULL),
    unrecorded_task_ids = ARRAY(
        SELECT u.t FROM (
            SELECT u.t, min(u.ord) AS first_at
            FROM unnest(s.spawned_task_ids) WITH ORDINALITY AS u(t, ord)
            WHERE NOT EXISTS (SELECT 1 FROM supervisor_tasks t
                              WHERE t.id = u.t AND t.supervisor_id = s.id)
            GROUP BY u.t) AS u
        ORDER BY u.first_at);

-- What the view assembles; also used by the statements that return a whole state.
CREATE FUNCTION supervisor_history(sid uuid) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT COALESCE(jsonb_agg(m.message::jsonb ORDER BY m.seq), '[]'::jsonb)
    FROM supervisor_messages m WHERE m.supervisor_id = sid
$$;

CREATE FUNCTION supervisor_spawned_tasks(sid uuid) RETURNS uuid[] LANGUAGE sql STABLE AS $$
    SELECT ARRAY(SELECT t.id FROM supervisor_tasks t
                 WHERE t.supervisor_id = sid AND t.spawn_seq IS NOT NULL
                 ORDER BY t.spawn_seq)
$$;

-- A checkpoint's copies become positions where they are a prefix of what is now stored
-- (as they are unless a fallback replaced the history since); the others keep them.
UPDATE supervisor_checkpoints c SET
    message_seq = jsonb_array_length(c.snapshot->'conversation_history'),
    snapshot = c.snapshot - 'conversation_history'
WHERE jsonb_typeof(c.snapshot->'conversation_history') = 'array'
  AND c.snapshot->'conversation_history' = (
      SELECT COALESCE(jsonb_agg(m.message::jsonb ORDER BY m.seq), '[]'::jsonb)
      FROM supervisor_messages m
      WHERE m.supervisor_id = c.supervisor_id
        AND m.seq <= jsonb_array_length(c.snapshot->'conversation_history'));

UPDATE supervisor_checkpoints c SET
    task_seq = jsonb_array_length(c.snapshot->'spawned_task_ids'),
    snapshot = c.snapshot - 'spawned_task_ids'
WHERE jsonb_typeof(c.snapshot->'spawned_task_ids') = 'array'
  AND c.snapshot->'spawned_task_ids' = (
      SELECT COALESCE(jsonb_agg(to_jsonb(t.id) ORDER BY t.spawn_seq), '[]'::jsonb)
      FROM supervisor_tasks t
      WHERE t.supervisor_id = c.supervisor_id
        AND t.spawn_seq <= jsonb_array_length(c.snapshot->'spawned_task_ids'));

ALTER TABLE supervisors
    DROP COLUMN conversation_history,
    DROP COLUMN spawned_task_ids;

-- -- The view by the original names -----------------------------------------------------

CREATE VIEW supervisor_states AS
SELECT s.id, s.contract_id, s.task_id,
       COALESCE(s.legacy_history, supervisor_history(s.id)) AS conversation_history,
       s.pending_task_ids, s.phase, s.last_activity, s.created_at, s.updated_at, s.state,
       s.current_activity, s.progress, s.error_message,
       supervisor_spawned_tasks(s.id) || s.unrecorded_task_ids AS spawned_task_ids,
       s.pending_questions, s.restoration_count, s.last_restored_at, s.restoration_source,
       s.owner_daemon_id, s.owner_epoch, s.agent, s.last_event_seq,
       s.restoration_window_started_at, s.restorations_in_window, s.last_event_id
FROM supervisors s;

-- An INSERT through the view that leaves a column out gets the table's default.
ALTER VIEW supervisor_states
    ALTER COLUMN conversation_history SET DEFAULT '[]'::jsonb,
    ALTER COLUMN pending_task_ids SET DEFAULT '{}',
    ALTER COLUMN last_activity SET DEFAULT now(),
    ALTER COLUMN created_at SET DEFAULT now(),
    ALTER COLUMN updated_at SET DEFAULT now(),
    ALTER COLUMN state SET DEFAULT 'initializing',
    ALTER COLUMN progress SET DEFAULT 0,
    ALTER COLUMN spawned_task_ids SET DEFAULT '{}',
    ALTER COLUMN pending_questions SET DEFAULT '[]'::jsonb,
    ALTER COLUMN restoration_count SET DEFAULT 0,
    ALTER COLUMN owner_epoch SET DEFAULT 0,
    ALTER COLUMN last_event_seq SET DEFAULT 0,
    ALTER COLUMN restorations_in_window SET DEFAULT 0;

-- Make a supervisor's history `h`: when what is stored is a prefix of `h` (a writer that
-- appended, `conversation_history || ...`), only the new messages are inserted; anything
-- else replaces the history. A value that is not an array is kept as legacy_history.
CREATE FUNCTION supervisor_history_set(sid uuid, h jsonb) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    stored bigint;
    legacy jsonb;
BEGIN
    IF h IS NULL THEN
        RAISE EXCEPTION 'null value in column "conversation_history" violates not-null constraint'
            USING ERRCODE = 'not_null_violation', COLUMN = 'conversation_history';
    END IF;
    SELECT s.message_seq, s.legacy_history INTO stored, legacy
    FROM supervisors s WHERE s.id = sid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF jsonb_typeof(h) <> 'array' THEN
        DELETE FROM supervisor_messages WHERE supervisor_id = sid;
        UPDATE supervisors SET legacy_history = h, message_seq = 0 WHERE id = sid;
        RETURN;
    END IF;
    IF legacy IS NOT NULL OR jsonb_array_length(h) < stored OR (stored > 0 AND (
        SELECT jsonb_agg(x.e ORDER BY x.o) FROM jsonb_array_elements(h) WITH ORDINALITY AS x(e, o)
        WHERE x.o <= stored) IS DISTINCT FROM supervisor_history(sid)) THEN
        DELETE FROM supervisor_messages WHERE supervisor_id = sid;
        stored := 0;
    END IF;
    INSERT INTO supervisor_messages (supervisor_id, seq, message)
    SELECT sid, x.o, x.e::json FROM jsonb_array_elements(h) WITH ORDINALITY AS x(e, o)
    WHERE x.o > stored;
    UPDATE supervisors SET message_seq = jsonb_array_length(h), legacy_history = NULL
    WHERE id = sid;
END $$;

-- Record one task id as spawned by a supervisor (once): its task row takes the next
-- place; an id with no task row of this supervisor is kept as unrecorded. Returns false
-- when the supervisor does not exist.
CREATE FUNCTION supervisor_spawned_add(sid uuid, tid uuid) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    next_seq bigint;
BEGIN
    SELECT s.task_seq + 1 INTO next_seq FROM supervisors s WHERE s.id = sid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE supervisor_tasks SET spawn_seq = next_seq
    WHERE id = tid AND supervisor_id = sid AND spawn_seq IS NULL;
    IF FOUND THEN
        UPDATE supervisors SET task_seq = next_seq,
            unrecorded_task_ids = array_remove(unrecorded_task_ids, tid)
        WHERE id = sid;
    ELSIF NOT EXISTS (SELECT 1 FROM supervisor_tasks
                      WHERE id = tid AND supervisor_id = sid AND spawn_seq IS NOT NULL) THEN
        UPDATE supervisors SET unrecorded_task_ids = unrecorded_task_ids || tid
        WHERE id = sid AND NOT tid = ANY (unrecorded_task_ids);
    END IF;
    RETURN true;
END $$;

-- Make a supervisor's spawned task ids `ids`: appended ids are added one by one; anything
-- else starts the list again (the task rows stay, no longer counted as spawned).
CREATE FUNCTION supervisor_spawned_set(sid uuid, ids uuid[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    stored uuid[];
    n int;
    tid uuid;
BEGIN
    IF ids IS NULL THEN
        RAISE EXCEPTION 'null value in column "spawned_task_ids" violates not-null constraint'
            USING ERRCODE = 'not_null_violation', COLUMN = 'spawned_task_ids';
    END IF;
    SELECT supervisor_spawned_tasks(s.id) || s.unrecorded_task_ids INTO stored
    FROM supervisors s WHERE s.id = sid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    n := cardinality(stored);
    IF n > 0 AND (cardinality(ids) < n OR ids[1:n] IS DISTINCT FROM stored) THEN
        UPDATE supervisor_tasks SET spawn_seq = NULL
        WHERE supervisor_id = sid AND spawn_seq IS NOT NULL;
        UPDATE supervisors SET task_seq = 0, unrecorded_task_ids = '{}' WHERE id = sid;
        n := 0;
    END IF;
    FOREACH tid IN ARRAY COALESCE(ids[n + 1:], '{}') LOOP
        PERFORM supervisor_spawned_add(sid, tid);
    END LOOP;
END $$;

CREATE FUNCTION supervisor_states_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO supervisors (
        id, contract_id, task_id, pending_task_ids, phase, last_activity, created_at,
        updated_at, state, current_activity, progress, error_message, pending_questions,
        restoration_count, last_restored_at, restoration_source, owner_daemon_id,
        owner_epoch, agent, last_event_seq, restoration_window_started_at,
        restorations_in_window, last_event_id)
    VALUES (
        NEW.id, NEW.contract_id, NEW.task_id, NEW.pending_task_ids, NEW.phase,
        NEW.last_activity, NEW.created_at, NEW.updated_at, NEW.state, NEW.current_activity,
        NEW.progress, NEW.error_message, NEW.pending_questions, NEW.restoration_count,
        NEW.last_restored_at, NEW.restoration_source, NEW.owner_daemon_id, NEW.owner_epoch,
        NEW.agent, NEW.last_event_seq, NEW.restoration_window_started_at,
        NEW.restorations_in_window, NEW.last_event_id);
    PERFORM supervisor_history_set(NEW.id, NEW.conversation_history);
    PERFORM supervisor_spawned_set(NEW.id, NEW.spawned_task_ids);
    RETURN NEW;
END $$;

CREATE FUNCTION supervisor_states_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE supervisors SET
        id = NEW.id, contract_id = NEW.contract_id, task_id = NEW.task_id,
        pending_task_ids = NEW.pending_task_ids, phase = NEW.phase,
        last_activity = NEW.last_activity, created_at = NEW.created_at,
        updated_at = NEW.updated_at, state = NEW.state, current_activity = NEW.current_activity,
        progress = NEW.progress, error_message = NEW.error_message,
        pending_questions = NEW.pending_questions, restoration_count = NEW.restoration_count,
        last_restored_at = NEW.last_restored_at, restoration_source = NEW.restoration_source,
        owner_daemon_id = NEW.owner_daemon_id, owner_epoch = NEW.owner_epoch,
        agent = NEW.agent, last_event_seq = NEW.last_event_seq,
        restoration_window_started_at = NEW.restoration_window_started_at,
        restorations_in_window = NEW.restorations_in_window, last_event_id = NEW.last_event_id
    WHERE id = OLD.id;
    IF NEW.conversation_history IS DISTINCT FROM OLD.conversation_history THEN
        PERFORM supervisor_history_set(NEW.id, NEW.conversation_history);
    END IF;
    IF NEW.spawned_task_ids IS DISTINCT FROM OLD.spawned_task_ids THEN
        PERFORM supervisor_spawned_set(NEW.id, NEW.spawned_task_ids);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER supervisor_states_insert INSTEAD OF INSERT ON supervisor_states
    FOR EACH ROW EXECUTE FUNCTION supervisor_states_insert();
CREATE TRIGGER supervisor_states_update INSTEAD OF UPDATE ON supervisor_states
    FOR EACH ROW EXECUTE FUNCTION supervisor_states_update();
-- DELETE needs no trigger: the view is simple enough for PostgreSQL to delete from
-- supervisors itself, whose own trigger deletes the supervisor's rows.
