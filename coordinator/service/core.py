"""What every use case needs, built once at start and handed to each service."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.catalog import Catalog
from coordinator.config import CoordinatorConfig
from coordinator.fleet import Fleet
from coordinator.metrics import Metrics
from coordinator.pki import CertificateAuthority
from coordinator.service.snapshot import PlacementSnapshot
from coordinator.store.engine import Store


@dataclass
class Core:
    config: CoordinatorConfig
    store: Store
    fleet: Fleet
    catalog: Catalog
    ca: CertificateAuthority
    clock: Callable[[], float] = field(default=time.time)
    #: The scheduler's cached view of nodes and regions (service/snapshot.py).
    snapshot: PlacementSnapshot = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    #: Ports the gRPC server actually bound (the config may say 0); agent commands name these.
    session_port: int = 0
    enroll_port: int = 0

    def __post_init__(self) -> None:
        self.snapshot = PlacementSnapshot(self.store)
