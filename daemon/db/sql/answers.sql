-- find_pending_question --
-- The supervisor that waits on a question id, with the question, or nothing
SELECT s.id AS supervisor_id, s.owner_daemon_id, q AS question
FROM supervisors s
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(s.pending_questions) = 'array' THEN s.pending_questions
         ELSE '[]'::jsonb END) AS q
WHERE s.pending_questions @> jsonb_build_array(jsonb_build_object('id', $1::text))
  AND q->>'id' = $1::text
LIMIT 1

-- get_answer --
-- An answer already recorded for a question, or nothing
SELECT question_id, supervisor_id, answer, answered_by, answered_at, applied_at
FROM question_answers WHERE question_id = $1

-- record_answer --
-- Record an answer (once per question) and wake the daemon waiting for it; returns nothing when the question was already answered
WITH saved AS (
    INSERT INTO question_answers (question_id, supervisor_id, answer, answered_by)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (question_id) DO NOTHING
    RETURNING question_id, supervisor_id
)
SELECT question_id,
       pg_notify('supervisor_answers', json_build_object(
           'questionId', question_id, 'supervisorId', supervisor_id)::text)
FROM saved

-- unapplied_answers_of_owner --
-- Answers not yet applied for this daemon's supervisors (the polling fallback)
SELECT a.question_id, a.supervisor_id, a.answer, a.answered_by
FROM question_answers a
JOIN supervisors s ON s.id = a.supervisor_id
WHERE a.applied_at IS NULL AND s.owner_daemon_id = $1

-- notify_question --
-- Deliver one question on the questions channel ($1, see store.QUESTIONS_CHANNEL; restoration.sql sends its own at commit), $2 its JSON body
SELECT pg_notify($1, $2)

-- ping --
-- One round trip, nothing read: a held connection the network dropped fails it (the hub's listener)
SELECT 1
