-- summarize_pending_questions --
-- How many questions wait for an answer (as `questions list` shows them) and for how many seconds the oldest has waited; a malformed askedAt is left out of the age, not an error
SELECT count(*) AS pending,
       COALESCE(EXTRACT(EPOCH FROM now() - min(
           CASE WHEN e.q ->> 'askedAt' ~ '^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}'
                THEN (e.q ->> 'askedAt')::timestamptz END)), 0)::float8 AS oldest_age_s
FROM supervisor_states s
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(s.pending_questions) = 'array' THEN s.pending_questions
         ELSE '[]'::jsonb END) AS e(q)
WHERE s.pending_questions <> '[]'::jsonb
