"""The image catalog as a resource: the configured images (config/images.yaml) and those an admin adds
through the API, which are kept in the database and survive restarts."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from coordinator.catalogs.images import CatalogImage
from coordinator.domain.records import Principal
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest, Conflict, NotFound
from coordinator.store import catalog as catalog_store
from coordinator.store import users as users_store


class ImageService:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def load(self) -> None:
        """Add the API-added entries to the catalog (at start; a configured name wins over a stored one)."""
        async with self.core.store.read() as conn:
            stored = await catalog_store.list_added(conn)
        for definition in stored:
            image = CatalogImage.model_validate(definition)
            if image.name not in self.core.catalog.configured:
                self.core.catalog.add(image)

    def source(self, name: str) -> str:
        return "config" if name in self.core.catalog.configured else "api"

    def list(self, caller: Principal) -> list[CatalogImage]:
        """An admin sees the whole catalog; others the images offered to everyone or to their organization."""
        return [i for i in self.core.catalog.listed() if caller.admin or i.offered_to(caller.organization_id)]

    async def add(self, caller: Principal, image: CatalogImage) -> CatalogImage:
        policy.require_admin(caller, "add catalog images")
        taken = Conflict(f"name: the catalog already has an image named {image.name}", field="name")
        if self.core.catalog.get(image.name) is not None:
            raise taken
        try:
            async with self.core.store.write() as conn:
                if image.organization is not None and not await users_store.organization_exists(
                    conn, image.organization
                ):
                    raise BadRequest(
                        f"organization: {image.organization} does not exist", field="organization"
                    )
                await catalog_store.add(
                    conn, image.name, image.model_dump(), caller.user_id, self.core.clock()
                )
        except IntegrityError as exc:
            raise Conflict(
                f"name: the catalog already has an image named {image.name}", field="name"
            ) from exc
        self.core.catalog.add(image)
        return image

    async def remove(self, caller: Principal, name: str) -> None:
        """Instances deployed from it keep running: they carry their own image reference and command."""
        policy.require_admin(caller, "remove catalog images")
        if self.core.catalog.get(name) is None:
            raise NotFound(f"name: no catalog image named {name}", field="name")
        if name in self.core.catalog.configured:
            raise BadRequest(
                f"name: {name} is defined in the catalog file (catalog.images); remove it there", field="name"
            )
        async with self.core.store.write() as conn:
            await catalog_store.remove(conn, name)
        self.core.catalog.remove(name)
