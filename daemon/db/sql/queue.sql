-- apply_batch --
-- Apply a folded batch in one statement, so one implicit transaction; $1 is a JSON array with one row per supervisor (see daemon/persistence/fold.py), $2 their ids, $3 their journal segments (JSON texts, in the same order); returns the supervisors it left untouched (missing, fenced by another owner's epoch, or already holding this batch), or NULL when it updated them all
-- The nested values are read as json, which copies their text, not as jsonb, which
-- would parse each into a tree, print it and parse it again; each is parsed once
-- where it is used. The journal segments are not in the document at all: ROWS FROM
-- pairs the n-th segment with the n-th row, and the journal column (json) only
-- checks their text.
-- Nothing that grows with a supervisor's age is rewritten: a message is an inserted
-- row of supervisor_messages and a spawned task one of supervisor_tasks, numbered from
-- the counters the UPDATE advances (message_seq, task_seq); a checkpoint records those
-- positions. Every INSERT reads the rows the UPDATE returned, so a supervisor it left
-- untouched (fenced, or holding this batch already) gets no rows either.
WITH b AS (
    SELECT *
    FROM ROWS FROM (
        json_to_recordset($1::text::json) AS (
            i uuid, n int, ph text, st text, a text, p int, er text, ep bigint,
            le uuid, tk json, tn int, aw uuid[], q json, an json, ai text[],
            m json, mn int, rt uuid[]),
        unnest($3::text[])
    ) AS b(i, n, ph, st, a, p, er, ep, le, tk, tn, aw, q, an, ai, m, mn, rt, ev)
),
upd AS (
    UPDATE supervisors s SET
        phase = COALESCE(b.ph, s.phase),
        -- An answer that leaves no question pending ends waiting_for_user.
        state = CASE
            WHEN b.ai IS NOT NULL AND COALESCE(b.st, s.state) = 'waiting_for_user'
                 AND NOT EXISTS (
                     SELECT 1
                     FROM jsonb_array_elements(s.pending_questions || COALESCE(b.q::jsonb, '[]')) AS e(q)
                     WHERE NOT (e.q->>'id' = ANY (b.ai)))
                THEN 'working'
            ELSE COALESCE(b.st, s.state) END,
        error_message = CASE WHEN b.st IS NULL THEN s.error_message ELSE b.er END,
        current_activity = COALESCE(b.a, s.current_activity),
        progress = COALESCE(b.p, s.progress),
        task_seq = s.task_seq + COALESCE(b.tn, 0),
        pending_task_ids = CASE
            WHEN b.rt IS NOT NULL THEN ARRAY(
                SELECT u.t
                FROM unnest(s.pending_task_ids || COALESCE(b.aw, '{}')) WITH ORDINALITY AS u(t, o)
                WHERE NOT u.t = ANY (b.rt)
                ORDER BY u.o)
            WHEN b.aw IS NULL OR b.aw = '{}' THEN s.pending_task_ids
            ELSE s.pending_task_ids || b.aw END,
        pending_questions = CASE
            WHEN b.q IS NULL AND b.ai IS NULL THEN s.pending_questions
            WHEN b.ai IS NULL THEN s.pending_questions || b.q::jsonb
            ELSE (
                SELECT COALESCE(jsonb_agg(e.q ORDER BY e.ord), '[]'::jsonb)
                FROM jsonb_array_elements(s.pending_questions || COALESCE(b.q::jsonb, '[]'))
                    WITH ORDINALITY AS e(q, ord)
                WHERE NOT (e.q->>'id' = ANY (b.ai)))
            END,
        message_seq = s.message_seq + COALESCE(b.mn, 0),
        last_event_seq = s.last_event_seq + b.n,
        last_event_id = COALESCE(b.le, s.last_event_id),
        last_activity = now(),
        updated_at = now()
    FROM b
    -- $2 repeats the ids as an array so the rows are found through the primary key
    -- (the planner cannot know how many rows the document holds and would otherwise
    -- scan the whole table for a batch of one).
    WHERE s.id = ANY ($2::uuid[]) AND s.id = b.i
      -- Fenced: the epoch the writer holds; an event naming none (tests, benchmarks:
      -- outside every daemon) writes only a supervisor no daemon owns.
      AND (s.owner_epoch = b.ep OR (b.ep IS NULL AND s.owner_daemon_id IS NULL))
      -- Compare-and-set: a row whose newest event is this batch's last one was written
      -- by an earlier attempt of this batch. Checked on the row itself, under its lock:
      -- when that attempt is still committing, this statement waits for it and then
      -- re-reads the row (READ COMMITTED), so the two can never both apply.
      AND (b.le IS NULL OR s.last_event_id IS DISTINCT FROM b.le)
    RETURNING s.id, s.phase, s.last_event_seq, s.message_seq, s.task_seq, b.n, b.ev, b.le,
        b.tk, b.tn, b.an, b.m, b.mn,
        CASE WHEN b.ph IS NOT NULL
             THEN to_jsonb(s) - 'owner_daemon_id' - 'owner_epoch' END AS snapshot
),
journal AS (
    INSERT INTO supervisor_events (supervisor_id, first_seq, last_seq, last_event_id, events)
    SELECT u.id, u.last_event_seq - u.n + 1, u.last_event_seq, u.le, u.ev::json
    FROM upd u
    WHERE u.n > 0
),
messages AS (
    INSERT INTO supervisor_messages (supervisor_id, seq, message)
    SELECT u.id, u.message_seq - u.mn + x.ord, x.m
    FROM upd u
    CROSS JOIN LATERAL json_array_elements(u.m) WITH ORDINALITY AS x(m, ord)
    WHERE u.m IS NOT NULL
),
-- A plain INSERT: a batch is never applied twice (the compare-and-set above), so a task id that exists already belongs to another task, and the event that
-- reuses it fails alone (unique violation) instead of pointing at someone else's task.
tasks AS (
    INSERT INTO supervisor_tasks (id, supervisor_id, spec, spawn_seq)
    SELECT t.t, u.id, t.sp, u.task_seq - u.tn + t.ord
    FROM upd u
    CROSS JOIN LATERAL ROWS FROM (json_to_recordset(u.tk) AS (t uuid, sp jsonb))
        WITH ORDINALITY AS t(t, sp, ord)
    WHERE u.tk IS NOT NULL
),
answers AS (
    INSERT INTO question_answers (question_id, supervisor_id, answer, answered_by, applied_at)
    SELECT t.q, u.id, t.a, t.by, now()
    FROM upd u
    CROSS JOIN LATERAL json_to_recordset(u.an) AS t(q uuid, a text, by text)
    WHERE u.an IS NOT NULL
    ON CONFLICT (question_id) DO UPDATE
        SET applied_at = COALESCE(question_answers.applied_at, now())
),
checkpoints AS (
    INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot, event_seq, message_seq,
                                        task_seq)
    SELECT u.id, u.phase, u.snapshot, u.last_event_seq, u.message_seq, u.task_seq
    FROM upd u WHERE u.snapshot IS NOT NULL
)
-- The common case costs two counts; the anti-join runs only when some row was left.
SELECT CASE WHEN (SELECT count(*) FROM upd) = (SELECT count(*) FROM b) THEN NULL
            ELSE (SELECT array_agg(b.i) FROM b
                  WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.id = b.i)) END AS missing

-- supervisors_not_at_event --
-- Of (supervisor, event id) pairs, the supervisors whose newest applied event is not that event: a batch that left some supervisors untouched was refused for these (fenced, gone), and had already been applied for the others (an earlier attempt committed)
SELECT x.sid
FROM unnest($1::uuid[], $2::uuid[]) AS x(sid, eid)
LEFT JOIN supervisors s ON s.id = x.sid
WHERE s.last_event_id IS DISTINCT FROM x.eid

-- list_supervisor_events --
-- A supervisor's journal expanded into events, oldest first, after a sequence number
-- An event is [id, kind, payload]; segments written before were {"e": id, "k": kind, "p": payload}.
SELECT s.supervisor_id, s.first_seq + x.ord - 1 AS seq,
       COALESCE(x.e->>0, x.e->>'e')::uuid AS event_id,
       COALESCE(x.e->>1, x.e->>'k') AS kind, COALESCE(x.e->2, x.e->'p') AS payload, s.created_at
FROM supervisor_events s
CROSS JOIN LATERAL json_array_elements(s.events) WITH ORDINALITY AS x(e, ord)
WHERE s.supervisor_id = $1 AND s.last_seq > $2 AND s.first_seq + x.ord - 1 > $2
ORDER BY s.first_seq, x.ord
LIMIT $3
