-- lock_daemon_id --
-- Hold daemon id $1 for this session (a dedicated connection, for the life of the process): false when another session holds it, that is another process runs with this id
SELECT pg_try_advisory_lock(hashtextextended('supervisor-daemon id ' || $1, 0))

-- daemon_id_holders --
-- The backends (pid, and where they connect from) that hold the advisory lock of daemon id $1
SELECT a.pid, a.client_addr::text AS client_addr, a.backend_start
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = ((hashtextextended('supervisor-daemon id ' || $1, 0) >> 32) & 4294967295)::oid
  AND l.objid = (hashtextextended('supervisor-daemon id ' || $1, 0) & 4294967295)::oid

-- terminate_backend --
-- End one backend of this role: a connection of this process that the server still holds after the process gave it up, with the daemon id's lock
SELECT pg_terminate_backend($1)

-- register_daemon --
-- Announce a daemon (or its restart) with a fresh lease, its capacity ($6) and the token of this process ($7); the caller holds the daemon id's advisory lock, so no other process has this id. started_at stays when the same process registers again (after its lease lapsed)
INSERT INTO daemons (id, hostname, pid, version, started_at, heartbeat_at, lease_expires_at,
                     capacity, token)
VALUES ($1, $2, $3, $4, now(), now(), now() + make_interval(secs => $5), $6, $7)
ON CONFLICT (id) DO UPDATE SET
    hostname = EXCLUDED.hostname,
    pid = EXCLUDED.pid,
    version = EXCLUDED.version,
    started_at = CASE WHEN daemons.token = EXCLUDED.token THEN daemons.started_at
                      ELSE now() END,
    heartbeat_at = now(),
    lease_expires_at = EXCLUDED.lease_expires_at,
    capacity = EXCLUDED.capacity,
    token = EXCLUDED.token,
    stopped_at = NULL
RETURNING extract(epoch FROM lease_expires_at - now())::float8 AS lease_left_s

-- renew_daemon_lease --
-- Extend the lease of the process holding token $2 by $3 seconds, only while it still holds: a lease that expired (or that a claiming daemon found expired and marked stopped) is never extended, the daemon registers again and claims with new epochs; returns the seconds left, nothing when refused
UPDATE daemons SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => $3)
WHERE id = $1 AND token IS NOT DISTINCT FROM $2 AND stopped_at IS NULL
  AND lease_expires_at > now()
RETURNING extract(epoch FROM lease_expires_at - now())::float8 AS lease_left_s

-- release_daemon --
-- A stop that hands over: the unfinished supervisors of this daemon get a new epoch (a late write of its own is refused) and its lease ends now, so other daemons claim them at their next round; how many were released, nothing when the id is another process's now
WITH me AS (
    SELECT id FROM daemons WHERE id = $1 AND token IS NOT DISTINCT FROM $2 FOR UPDATE
),
released AS (
    UPDATE supervisors s SET owner_epoch = s.owner_epoch + 1
    FROM me
    WHERE s.owner_daemon_id = me.id AND s.state NOT IN ('completed', 'failed', 'blocked')
    RETURNING s.id
),
stopped AS (
    UPDATE daemons d SET stopped_at = now(), lease_expires_at = now()
    FROM me
    WHERE d.id = me.id
    RETURNING d.id
)
SELECT (SELECT count(*) FROM released) AS released
FROM stopped

-- mark_daemon_stopped --
-- A clean stop: the lease ends now
UPDATE daemons SET stopped_at = now(), lease_expires_at = now()
WHERE id = $1

-- reap_expired_daemons --
-- Mark stopped every daemon whose lease expired, before claiming their supervisors, in the claim's transaction: the row lock taken here makes a renewal that raced the expiry wait for the claim and then find the daemon stopped, so a daemon whose supervisors are being taken over never extends its lease
UPDATE daemons SET stopped_at = now()
WHERE stopped_at IS NULL AND lease_expires_at < now()

-- dead_daemons --
-- The daemons other than $1 that stopped or whose lease expired, whose supervisors may be claimed (read after reap_expired_daemons, in the claim's transaction)
SELECT COALESCE(array_agg(id), '{}') FROM daemons
WHERE id <> $1 AND (stopped_at IS NOT NULL OR lease_expires_at < now())

-- list_daemons --
-- Every registered daemon with whether its lease is still valid
SELECT id, hostname, pid, version, started_at, heartbeat_at, lease_expires_at, stopped_at,
       (stopped_at IS NULL AND lease_expires_at > now()) AS alive
FROM daemons
ORDER BY id
