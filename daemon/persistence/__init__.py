"""The save path: the only way a running supervisor's state is written.

`events` are the save points a supervisor produces, `fold` folds a run of them into one
set-based write, `queue` is the persistence queue (group commit: an acknowledged event is
a committed one), `writer` writes one batch (retries, bisection, acknowledgements) and
`lanes` holds the queue's parts (errors, counters, per-supervisor ordering).
"""
