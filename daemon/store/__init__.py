"""The store: every named persistence operation, and the only caller of SQL at run time.

Its rooms, by what they serve: `operations` (a supervisor's reads and its creation,
under the original system's names), `events` (the persistence queue's set-based write
and the metrics' reads), `restore` (restoration's set-based loads and writes, retention),
`work` (tasks and answers of a running daemon, the questions channel), `people`
(people's commands without a daemon) and `daemons` (registration, leases, fencing);
`stores` makes them all over one database, once per process. Callers import the names
from here.
"""

from daemon.store.daemons import DaemonRegistry, DaemonSession
from daemon.store.events import Batch, EventStore, MetricsStore
from daemon.store.operations import SpawnedTasksCheck, Store
from daemon.store.restore import RestorationStore, RetentionStore
from daemon.store.stores import Stores
from daemon.store.work import QUESTIONS_CHANNEL, Listener, TaskChange, WorkStore

__all__ = [
    "QUESTIONS_CHANNEL",
    "Batch",
    "DaemonRegistry",
    "DaemonSession",
    "EventStore",
    "Listener",
    "MetricsStore",
    "RestorationStore",
    "RetentionStore",
    "SpawnedTasksCheck",
    "Store",
    "Stores",
    "TaskChange",
    "WorkStore",
]
