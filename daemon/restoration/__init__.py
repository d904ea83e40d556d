"""The restore path: bring supervisors back from the database, validation first.

`plan` decides (pure: validate, fall back to a checkpoint, or park) over `records`,
`validation` checks a stored state, `checkpoints` picks the newest valid checkpoint and the
state it restores, `context` writes the agent's restoration message, and `run` is the I/O
that loads every owned supervisor, applies the plans and redelivers pending questions.
"""
