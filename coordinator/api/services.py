"""The use cases the HTTP layer may call, reachable from any request as ``request.app[SERVICES]``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from coordinator.api.auth import Authenticator
from coordinator.metrics import Metrics
from coordinator.service.access import AccessService
from coordinator.service.clients import ClientService
from coordinator.service.deploy import DeployService
from coordinator.service.events import EventService
from coordinator.service.images import ImageService
from coordinator.service.instances import InstanceService
from coordinator.service.logs import LogService
from coordinator.service.nodes import NodeService
from coordinator.service.regions import RegionService
from coordinator.service.servers import ServerService
from coordinator.service.vpn import VpnService
from coordinator.service.webhooks import WebhookService


@dataclass
class Services:
    """What a handler may reach: use cases, and the few plain facts they all share (never the store,
    the fleet or the CA)."""

    clock: Callable[[], float]
    metrics: Metrics
    #: Proxies whose X-Forwarded-For names the client (auth.trusted_proxies).
    trusted_proxies: tuple[str, ...]
    auth: Authenticator
    access: AccessService
    nodes: NodeService
    instances: InstanceService
    deploys: DeployService
    regions: RegionService
    images: ImageService
    servers: ServerService
    clients: ClientService
    vpn: VpnService
    events: EventService
    webhooks: WebhookService
    logs: LogService


SERVICES: web.AppKey[Services] = web.AppKey("services", Services)
