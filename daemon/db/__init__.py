"""The database driver layer: pool, embedded server, migrations, SQL by name.

Only daemon.store (and the migration runner) talk to PostgreSQL; everything above
works with records from daemon.models.
"""
