-- apply_batch --
-- Apply a folded batch of events in one statement, so one implicit transaction; returns the ids of supervisors it could not update (missing, or fenced by another owner's epoch)
WITH b AS (
    SELECT *
    FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::text[], $6::int[],
                $7::text[], $8::bigint[])
        AS b(id, n_events, phase, state, activity, progress, error, epoch)
),
spawned AS (
    SELECT sid, array_agg(tid ORDER BY ord) AS tids,
           array_agg(tid ORDER BY ord) FILTER (WHERE awaited) AS awaited
    FROM unnest($9::uuid[], $10::uuid[], $11::bool[]) WITH ORDINALITY AS t(sid, tid, awaited, ord)
    GROUP BY sid
),
asked AS (
    SELECT sid, jsonb_agg(q::jsonb ORDER BY ord) AS questions
    FROM unnest($13::uuid[], $14::text[]) WITH ORDINALITY AS t(sid, q, ord)
    GROUP BY sid
),
answered AS (
    SELECT sid, array_agg(qid) AS qids
    FROM unnest($15::uuid[], $16::text[]) AS t(sid, qid)
    GROUP BY sid
),
messages AS (
    SELECT sid, jsonb_agg(m::jsonb ORDER BY ord) AS msgs
    FROM unnest($19::uuid[], $20::text[]) WITH ORDINALITY AS t(sid, m, ord)
    GROUP BY sid
),
upd AS (
    UPDATE supervisor_states s SET
        phase = COALESCE(b.phase, s.phase),
        -- An answer that leaves no question pending ends waiting_for_user.
        state = CASE
            WHEN an.qids IS NOT NULL AND COALESCE(b.state, s.state) = 'waiting_for_user'
                 AND NOT EXISTS (
                     SELECT 1
                     FROM jsonb_array_elements(
                         s.pending_questions || COALESCE(a.questions, '[]'::jsonb)) AS e(q)
                     WHERE NOT (e.q->>'id' = ANY (an.qids)))
                THEN 'working'
            ELSE COALESCE(b.state, s.state) END,
        error_message = CASE WHEN b.state IS NULL THEN s.error_message ELSE b.error END,
        current_activity = COALESCE(b.activity, s.current_activity),
        progress = COALESCE(b.progress, s.progress),
        spawned_task_ids = CASE WHEN sp.tids IS NULL THEN s.spawned_task_ids
                                ELSE s.spawned_task_ids || sp.tids END,
        pending_task_ids = CASE WHEN sp.awaited IS NULL THEN s.pending_task_ids
                                ELSE s.pending_task_ids || sp.awaited END,
        pending_questions = CASE
            WHEN a.questions IS NULL AND an.qids IS NULL THEN s.pending_questions
            WHEN an.qids IS NULL THEN s.pending_questions || a.questions
            ELSE (
                SELECT COALESCE(jsonb_agg(e.q ORDER BY e.ord), '[]'::jsonb)
                FROM jsonb_array_elements(s.pending_questions || COALESCE(a.questions, '[]'::jsonb))
                    WITH ORDINALITY AS e(q, ord)
                WHERE NOT (e.q->>'id' = ANY (an.qids)))
            END,
        conversation_history = CASE WHEN m.msgs IS NULL THEN s.conversation_history
                                    ELSE s.conversation_history || m.msgs END,
        last_event_seq = s.last_event_seq + b.n_events,
        last_activity = now(),
        updated_at = now()
    FROM b
    LEFT JOIN spawned sp ON sp.sid = b.id
    LEFT JOIN asked a ON a.sid = b.id
    LEFT JOIN answered an ON an.sid = b.id
    LEFT JOIN messages m ON m.sid = b.id
    WHERE s.id = b.id AND (b.epoch IS NULL OR s.owner_epoch = b.epoch)
    RETURNING s.id, s.phase, s.last_event_seq, b.n_events,
        CASE WHEN b.phase IS NOT NULL
             THEN to_jsonb(s) - 'owner_daemon_id' - 'owner_epoch' END AS snapshot
),
journal AS (
    INSERT INTO supervisor_events (supervisor_id, seq, event_id, kind, payload)
    SELECT e.sid, u.last_event_seq - u.n_events + e.idx, e.eid, e.kind, e.payload::jsonb
    FROM unnest($21::uuid[], $22::int[], $23::uuid[], $24::text[], $25::text[])
        AS e(sid, idx, eid, kind, payload)
    JOIN upd u ON u.id = e.sid
),
tasks AS (
    INSERT INTO supervisor_tasks (id, supervisor_id, spec)
    SELECT t.tid, t.sid, t.spec::jsonb
    FROM unnest($9::uuid[], $10::uuid[], $12::text[]) AS t(sid, tid, spec)
    JOIN upd u ON u.id = t.sid
    ON CONFLICT (id) DO NOTHING
),
answers AS (
    INSERT INTO question_answers (question_id, supervisor_id, answer, answered_by, applied_at)
    SELECT t.qid::uuid, t.sid, t.answer, t.answered_by, now()
    FROM unnest($15::uuid[], $16::text[], $17::text[], $18::text[])
        AS t(sid, qid, answer, answered_by)
    JOIN upd u ON u.id = t.sid
    ON CONFLICT (question_id) DO UPDATE
        SET applied_at = COALESCE(question_answers.applied_at, now())
),
checkpoints AS (
    INSERT INTO supervisor_checkpoints (supervisor_id, phase, snapshot, event_seq)
    SELECT u.id, u.phase, u.snapshot, u.last_event_seq FROM upd u WHERE u.snapshot IS NOT NULL
)
SELECT b.id FROM b LEFT JOIN upd u ON u.id = b.id WHERE u.id IS NULL

-- supervisors_without_event --
-- Of (supervisor, event id) pairs, the supervisors whose newest journal entry is not that event: after a commit of unknown outcome, tells whether a batch was written
SELECT x.sid
FROM unnest($1::uuid[], $2::uuid[]) AS x(sid, eid)
WHERE x.eid IS DISTINCT FROM (
    SELECT e.event_id FROM supervisor_events e
    WHERE e.supervisor_id = x.sid
    ORDER BY e.seq DESC
    LIMIT 1)

-- list_supervisor_events --
-- A supervisor's journal, oldest first, from a sequence number on
SELECT supervisor_id, seq, event_id, kind, payload, created_at
FROM supervisor_events
WHERE supervisor_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
