-- A flush of the persistence queue inserts hundreds of task, answer and checkpoint rows
-- in one statement. A foreign key checks each row with a query of its own (an SPI call,
-- an index lookup and a row lock per row): under load that was more than a tenth of the
-- server's time. These triggers check every row a statement wrote with one query, and
-- keep what the foreign keys guaranteed:
-- - a row names a supervisor that exists (error 23503, foreign_key_violation, as before);
-- - that supervisor cannot be deleted until the writing transaction ends (the same
--   KEY SHARE lock a foreign key takes, taken once per supervisor, and not at all for
--   a supervisor row the transaction itself wrote);
-- - deleting a supervisor deletes its rows;
-- - a supervisor's id never changes.

CREATE FUNCTION supervisor_rows_check() RETURNS trigger LANGUAGE plpgsql AS $$
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
    SELECT count(*) INTO found FROM supervisor_states s
    WHERE s.id IN (SELECT n.supervisor_id FROM new_rows n) AND s.xmin = me;
    IF found < wanted THEN
        SELECT found + count(*) INTO found FROM (
            SELECT 1 FROM supervisor_states s
            WHERE s.id IN (SELECT n.supervisor_id FROM new_rows n) AND s.xmin <> me
            FOR KEY SHARE) AS l;
    END IF;
    IF found < wanted THEN
        SELECT n.supervisor_id INTO missing FROM new_rows n
        WHERE NOT EXISTS (SELECT 1 FROM supervisor_states s WHERE s.id = n.supervisor_id)
        LIMIT 1;
        RAISE EXCEPTION 'insert or update on table "%" violates the supervisor check', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (supervisor_id)=(%s) is not present in table "supervisor_states".', missing),
                  TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION supervisor_rows_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM supervisor_tasks t WHERE t.supervisor_id IN (SELECT g.id FROM gone g);
    DELETE FROM supervisor_checkpoints c WHERE c.supervisor_id IN (SELECT g.id FROM gone g);
    DELETE FROM question_answers a WHERE a.supervisor_id IN (SELECT g.id FROM gone g);
    RETURN NULL;
END $$;

CREATE FUNCTION supervisor_id_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'a supervisor''s id cannot change (%)', OLD.id
            USING ERRCODE = 'foreign_key_violation', TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NEW;
END $$;

ALTER TABLE supervisor_tasks DROP CONSTRAINT IF EXISTS supervisor_tasks_supervisor_id_fkey;
ALTER TABLE supervisor_checkpoints DROP CONSTRAINT IF EXISTS supervisor_checkpoints_supervisor_id_fkey;
ALTER TABLE question_answers DROP CONSTRAINT IF EXISTS question_answers_supervisor_id_fkey;

CREATE TRIGGER supervisor_tasks_inserted AFTER INSERT ON supervisor_tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION supervisor_rows_check();
CREATE TRIGGER supervisor_tasks_updated AFTER UPDATE ON supervisor_tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION supervisor_rows_check();
CREATE TRIGGER supervisor_checkpoints_inserted AFTER INSERT ON supervisor_checkpoints
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION supervisor_rows_check();
CREATE TRIGGER supervisor_checkpoints_updated AFTER UPDATE ON supervisor_checkpoints
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION supervisor_rows_check();
CREATE TRIGGER question_answers_inserted AFTER INSERT ON question_answers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION supervisor_rows_check();
CREATE TRIGGER question_answers_updated AFTER UPDATE ON question_answers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION supervisor_rows_check();

CREATE TRIGGER supervisor_states_deleted AFTER DELETE ON supervisor_states
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION supervisor_rows_cascade();
CREATE TRIGGER supervisor_states_id_fixed BEFORE UPDATE OF id ON supervisor_states
    FOR EACH ROW EXECUTE FUNCTION supervisor_id_fixed();
