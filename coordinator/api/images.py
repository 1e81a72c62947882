"""The image catalog (seed 001's GET /api/images, plus admin routes to add and remove entries). Thin:
validate, call the use case, render."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from coordinator.api.routing import Call, Router
from coordinator.catalog import CatalogImage, ImageVariable

router = Router("images")


class ImageOut(BaseModel):
    """A catalog entry: what a deploy's ``image`` may name, with the variables it takes."""

    name: str
    image: str
    description: str
    variables: list[ImageVariable]
    startup: list[str]
    stopSignal: str
    ports: list[int]
    #: Offered only to this organization (null: to everyone).
    organization: int | None
    #: "config": from the catalog file (read-only here); "api": added through POST /api/images.
    source: Literal["config", "api"]


def render(image: CatalogImage, source: str) -> ImageOut:
    return ImageOut(
        name=image.name,
        image=image.image,
        description=image.description,
        variables=image.variables,
        startup=image.startup,
        stopSignal=image.stop_signal,
        ports=image.ports,
        organization=image.organization,
        source="config" if source == "config" else "api",
    )


@router.route("GET", "/api/images", response=list[ImageOut])
async def list_images(call: Call) -> list[ImageOut]:
    """The images a deploy may name (an admin sees all; others those offered to everyone or to their
    organization), with their defaults and the rules their variables must follow."""
    images = call.services.images
    return [render(i, images.source(i.name)) for i in images.list(call.caller)]


@router.route(
    "POST",
    "/api/images",
    body=CatalogImage,
    response=ImageOut,
    status=201,
    access="admin",
    errors={400: "Invalid image definition", 403: "Forbidden", 409: "An image of that name exists"},
)
async def add_image(call: Call, body: CatalogImage) -> ImageOut:
    """Add a catalog entry (kept in the database across restarts)."""
    added = await call.services.images.add(call.caller, body)
    return render(added, "api")


@router.route(
    "DELETE",
    "/api/images/{name}",
    status=204,
    access="admin",
    errors={400: "Defined in the catalog file", 403: "Forbidden", 404: "No such image"},
)
async def remove_image(call: Call) -> None:
    """Remove an entry added through the API; instances deployed from it keep running."""
    await call.services.images.remove(call.caller, call.path("name"))
