"""The restore path: bring supervisors back from the database, validation first.

`plan` decides (pure: validate, fall back to a checkpoint, or park), `validation` checks
a stored state, `context` writes the agent's restoration message, and `run` is the I/O
that loads every owned supervisor, applies the plans and redelivers pending questions.
"""
