-- register_daemon --
-- Announce a daemon (or its restart) with a fresh lease and its capacity ($6)
INSERT INTO daemons (id, hostname, pid, version, started_at, heartbeat_at, lease_expires_at,
                     capacity)
VALUES ($1, $2, $3, $4, now(), now(), now() + make_interval(secs => $5), $6)
ON CONFLICT (id) DO UPDATE SET
    hostname = EXCLUDED.hostname,
    pid = EXCLUDED.pid,
    version = EXCLUDED.version,
    started_at = now(),
    heartbeat_at = now(),
    lease_expires_at = EXCLUDED.lease_expires_at,
    capacity = EXCLUDED.capacity,
    stopped_at = NULL
RETURNING *

-- renew_daemon_lease --
-- Extend a running daemon's lease
UPDATE daemons SET heartbeat_at = now(), lease_expires_at = now() + make_interval(secs => $2)
WHERE id = $1 AND stopped_at IS NULL
RETURNING lease_expires_at

-- mark_daemon_stopped --
-- A clean stop: the lease ends now
UPDATE daemons SET stopped_at = now(), lease_expires_at = now()
WHERE id = $1

-- list_daemons --
-- Every registered daemon with whether its lease is still valid
SELECT id, hostname, pid, version, started_at, heartbeat_at, lease_expires_at, stopped_at,
       (stopped_at IS NULL AND lease_expires_at > now()) AS alive
FROM daemons
ORDER BY id
