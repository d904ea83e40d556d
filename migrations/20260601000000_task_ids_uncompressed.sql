-- The task id arrays are rewritten on every task spawned or collected, and they grow
-- with every task a supervisor ever spawned. Once a row outgrows a page's share,
-- PostgreSQL compressed them again on each rewrite (pglz; ids that share a prefix do
-- compress), which was a third of the server's CPU in bench/persistence.py. UUIDs
-- gain little from compression: keep them out of line, uncompressed.
ALTER TABLE supervisor_states
    ALTER COLUMN spawned_task_ids SET STORAGE EXTERNAL,
    ALTER COLUMN pending_task_ids SET STORAGE EXTERNAL;
