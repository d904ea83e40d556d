-- The supervisor_states table as the original system first had it, before its
-- enhancement (20260201000001). Kept as it was so that a database created by that
-- system upgrades in place.
CREATE TABLE supervisor_states (
    id UUID PRIMARY KEY,
    contract_id UUID NOT NULL,
    task_id UUID NOT NULL,
    conversation_history JSONB NOT NULL DEFAULT '[]'::jsonb,
    pending_task_ids UUID[] NOT NULL DEFAULT '{}',
    phase TEXT NOT NULL,
    last_activity TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_supervisor_states_contract_id ON supervisor_states (contract_id);
