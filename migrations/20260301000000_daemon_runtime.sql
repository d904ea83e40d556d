-- What the daemon needs beyond the original schema: registered daemons with leases,
-- ownership with a fencing epoch, spawned tasks, checkpoints, answers given while no
-- daemon ran, and the append-only event journal.

CREATE TABLE daemons (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    version TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_expires_at TIMESTAMPTZ NOT NULL,
    stopped_at TIMESTAMPTZ
);

-- owner_epoch is the fencing token: it grows by one each time ownership moves, and
-- every write by a daemon names the epoch it holds.
ALTER TABLE supervisor_states
    ADD COLUMN owner_daemon_id TEXT REFERENCES daemons (id) ON DELETE SET NULL,
    ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN agent TEXT,
    ADD COLUMN last_event_seq BIGINT NOT NULL DEFAULT 0;

CREATE INDEX idx_supervisor_states_owner ON supervisor_states (owner_daemon_id);

-- Every save point updates a supervisor's row; keep those updates cheap: free space
-- on each page and no index on a column that changes often (state, pending_questions),
-- so updates are HOT (no index writes). A long conversation history is stored out of
-- line (TOAST) by PostgreSQL itself, so an update that does not touch it copies a
-- pointer rather than the history.
ALTER TABLE supervisor_states SET (fillfactor = 70);

CREATE TABLE supervisor_tasks (
    id UUID PRIMARY KEY,
    supervisor_id UUID NOT NULL REFERENCES supervisor_states (id) ON DELETE CASCADE,
    status TEXT NOT NULL DEFAULT 'pending'
        CONSTRAINT supervisor_tasks_status_check CHECK (status IN (
            'pending', 'running', 'succeeded', 'failed', 'cancelled')),
    spec JSONB,
    result JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_supervisor_tasks_supervisor ON supervisor_tasks (supervisor_id);

-- A validated snapshot of a supervisor's state, taken at least at every phase change.
CREATE TABLE supervisor_checkpoints (
    id BIGSERIAL PRIMARY KEY,
    supervisor_id UUID NOT NULL REFERENCES supervisor_states (id) ON DELETE CASCADE,
    phase TEXT NOT NULL,
    snapshot JSONB NOT NULL,
    event_seq BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_supervisor_checkpoints_latest ON supervisor_checkpoints (supervisor_id, id DESC);

-- An answer is recorded here first, by whoever gives it (the CLI, while a daemon runs or
-- not); the owning daemon applies it to the supervisor and sets applied_at.
CREATE TABLE question_answers (
    question_id UUID PRIMARY KEY,
    supervisor_id UUID NOT NULL REFERENCES supervisor_states (id) ON DELETE CASCADE,
    answer TEXT NOT NULL,
    answered_by TEXT,
    answered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_at TIMESTAMPTZ
);

CREATE INDEX idx_question_answers_unapplied ON question_answers (supervisor_id)
    WHERE applied_at IS NULL;

-- The event journal: every critical event, in order per supervisor, append-only.
-- Events are stored in segments, one row per supervisor per flush (a flush writes
-- many supervisors' events in one transaction): `events` is a JSON array of
-- {"e": event id, "k": kind, "p": payload}, the n-th element having sequence number
-- first_seq + n - 1. One row per supervisor and flush instead of one per event keeps
-- group commit cheap; `supervisor-daemon history` expands segments back into events.
-- last_event_id tells, after a commit of unknown outcome, whether a batch was written.
CREATE TABLE supervisor_events (
    supervisor_id UUID NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    last_event_id UUID NOT NULL,
    events JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (supervisor_id, first_seq),
    CONSTRAINT supervisor_events_seq_check CHECK (last_seq >= first_seq)
);
