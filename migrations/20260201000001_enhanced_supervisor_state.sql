-- Detailed state, questions and restoration bookkeeping. Every column has a default,
-- so rows written before this step stay valid and get sensible values. JSON columns
-- carry no shape constraint on purpose: restoration validates them and must be able to
-- meet (and repair) whatever an older writer left there.
ALTER TABLE supervisor_states
    ADD COLUMN state TEXT NOT NULL DEFAULT 'initializing'
        CONSTRAINT supervisor_states_state_check CHECK (state IN (
            'initializing', 'idle', 'working', 'waiting_for_user', 'waiting_for_tasks',
            'completed', 'failed', 'blocked')),
    ADD COLUMN current_activity TEXT,
    ADD COLUMN progress INTEGER NOT NULL DEFAULT 0
        CONSTRAINT supervisor_states_progress_check CHECK (progress BETWEEN 0 AND 100),
    ADD COLUMN error_message TEXT,
    ADD COLUMN spawned_task_ids UUID[] NOT NULL DEFAULT '{}',
    ADD COLUMN pending_questions JSONB NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN restoration_count INTEGER NOT NULL DEFAULT 0
        CONSTRAINT supervisor_states_restoration_count_check CHECK (restoration_count >= 0),
    ADD COLUMN last_restored_at TIMESTAMPTZ,
    ADD COLUMN restoration_source TEXT
        CONSTRAINT supervisor_states_restoration_source_check CHECK (restoration_source IN (
            'daemon_restart', 'task_reassignment', 'manual'));
