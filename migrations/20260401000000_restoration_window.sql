-- The crash-loop guard: how many automatic restorations a supervisor had since the start
-- of its current window. A supervisor restored more than the configured number of times
-- within the window is parked as blocked for an operator instead of restored again.
ALTER TABLE supervisor_states
    ADD COLUMN restoration_window_started_at TIMESTAMPTZ,
    ADD COLUMN restorations_in_window INTEGER NOT NULL DEFAULT 0;
