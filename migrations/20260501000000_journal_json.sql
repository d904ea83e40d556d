-- The journal is written far more often than it is read: store its segments as json
-- (text checked on input) rather than jsonb (parsed into a tree on every insert).
-- Each flush inserts one segment per supervisor; `history` reads them back with
-- json_array_elements, which costs the same for the few rows it reads.
ALTER TABLE supervisor_events ALTER COLUMN events TYPE json USING events::json;
