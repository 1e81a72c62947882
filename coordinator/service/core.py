"""What every use case needs, built once at start and handed to each service."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from coordinator.catalog import Catalog
from coordinator.config import CoordinatorConfig
from coordinator.fleet import Fleet
from coordinator.pki import CertificateAuthority
from coordinator.store.engine import Store


@dataclass
class Core:
    config: CoordinatorConfig
    store: Store
    fleet: Fleet
    catalog: Catalog
    ca: CertificateAuthority
    clock: Callable[[], float] = field(default=time.time)
    #: Ports the gRPC server actually bound (the config may say 0); agent commands name these.
    session_port: int = 0
    enroll_port: int = 0
