"""The image catalog: seed 001's GET /api/images in Skyport's image shape, the same entries in ours at
/api/catalog/images, and admin routes to add and remove entries. Thin: validate, call the use case,
render."""

from __future__ import annotations

import shlex
from typing import Any, Literal

from pydantic import BaseModel, Field

from coordinator.api.routing import Call, Router
from coordinator.catalogs.images import CatalogImage, ImageVariable

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


class SkyportVariable(BaseModel):
    type: Literal["text"] = "text"
    default: str
    required: bool
    description: str
    pattern: str | None


class SkyportImage(BaseModel):
    """Seed 001's image record, as Skyport's image files define it and its dashboards read it: `Name` is
    what a deploy's `imagename` names, `Image` the Docker reference it sends as `image`."""

    Id: str
    Name: str
    Image: str
    AltImages: list[str]
    Cmd: str
    Env: list[str] = Field(description='Default variables as "NAME=value".')
    StopCommand: str
    Scripts: dict[str, Any] = Field(description="Install scripts: none, the image carries what it runs.")
    Variables: dict[str, SkyportVariable]
    Description: str
    Author: str
    AuthorName: str
    Meta: dict[str, str]

    @classmethod
    def of(cls, image: CatalogImage) -> SkyportImage:
        return cls(
            Id=image.name,
            Name=image.name,
            Image=image.image,
            AltImages=[],
            Cmd=shlex.join(image.startup),
            Env=[f"{v.name}={v.default}" for v in image.variables if v.default != ""],
            StopCommand="",
            Scripts={},
            Variables={
                v.name: SkyportVariable(
                    default=v.default, required=v.required, description=v.description, pattern=v.pattern
                )
                for v in image.variables
            },
            Description=image.description,
            Author="moorage",
            AuthorName="Moorage catalog",
            Meta={"Version": "Moorage catalog", "StopSignal": image.stop_signal},
        )


@router.route("GET", "/api/images", response=list[SkyportImage])
async def list_images(call: Call) -> list[SkyportImage]:
    """The images a deploy may name, in Skyport's image shape (an admin sees all; others those offered to
    everyone or to their organization). Moorage's own shape is at /api/catalog/images."""
    return [SkyportImage.of(i) for i in call.services.images.list(call.caller)]


@router.route("GET", "/api/catalog/images", response=list[ImageOut])
async def list_catalog(call: Call) -> list[ImageOut]:
    """The same images in Moorage's shape: defaults, the rules their variables follow, where each entry
    is kept."""
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
