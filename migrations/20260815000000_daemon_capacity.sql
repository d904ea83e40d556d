-- A daemon's capacity (the most supervisors it claims), recorded when it registers so
-- that people can see it beside its lease (`supervisor-daemon web`, the daemons page).
-- NULL for a daemon registered before this column existed.
ALTER TABLE daemons ADD COLUMN capacity INTEGER;
