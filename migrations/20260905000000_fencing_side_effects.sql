-- Fencing reaches side effects, not only state writes.
--
-- daemons.token: a value each daemon process picks when it registers. A renewal names
-- it, so a process can only renew the lease it registered itself (a second process
-- started with the same id is refused before it registers: an advisory lock on the
-- id, held on a dedicated connection, see daemons.sql).
--
-- supervisor_tasks.run_epoch: the owner epoch under which the task was last moved to
-- running. A task starts only through a compare-and-set from pending (or, for an
-- idempotent task left running by an earlier owner, from that earlier epoch) under
-- the supervisor's current epoch, and its outcome is written only while that epoch
-- still holds. `runs` counts the starts: more than one only for idempotent tasks.
ALTER TABLE daemons ADD COLUMN token UUID;

ALTER TABLE supervisor_tasks
    ADD COLUMN run_epoch BIGINT,
    ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;
