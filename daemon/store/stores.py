"""Every store over one database, made once per process and handed to the parts.

The daemon's lifecycle, a CLI command and the web server each open the database once
and make one `Stores` of it; the parts above the store (the hub, delivery, the task
runner, restoration, retention, the metrics, the lease, people's services) are given
the stores they need, never a pool, and never make a store of their own.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import asyncpg

from daemon.store.daemons import DaemonRegistry
from daemon.store.events import EventStore, MetricsStore
from daemon.store.operations import Store
from daemon.store.people import PeopleStore
from daemon.store.restore import RestorationStore, RetentionStore
from daemon.store.work import WorkStore

if TYPE_CHECKING:
    from daemon.db.database import Database


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Stores:
    supervisors: Store
    events: EventStore
    work: WorkStore
    restoration: RestorationStore
    retention: RetentionStore
    metrics: MetricsStore
    daemons: DaemonRegistry
    people: PeopleStore

    @classmethod
    def of(cls, db: Database) -> Stores:
        return cls.over(db.pool, dsn=db.dsn)

    @classmethod
    def over(cls, pool: asyncpg.Pool[Any], *, dsn: str | None = None) -> Stores:
        """The stores over `pool`. `dsn`: where the hub's listener and the lease's
        session open connections of their own (not needed by those who open none)."""
        return cls(
            supervisors=Store(pool),
            events=EventStore(pool),
            work=WorkStore(pool, dsn=dsn),
            restoration=RestorationStore(pool),
            retention=RetentionStore(pool),
            metrics=MetricsStore(pool),
            daemons=DaemonRegistry(pool, dsn=dsn),
            people=PeopleStore(pool),
        )
