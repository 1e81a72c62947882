"""The image catalog (coordinator/catalogs/images.yaml built in, or the operator's file): named images with
their defaults, so a panel can deploy "minecraft-paper" without knowing a Docker reference, and a
deploy's variables are checked before a container ever starts."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# A Docker reference: [registry[:port]/]path[:tag][@digest]; lowercase path components.
REFERENCE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)


class VariableError(ValueError):
    """A catalog image's variable is missing or does not match its pattern."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"variables.{name} {problem}")
        self.field = f"variables.{name}"


class ImageVariable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: str = ""
    default: str = ""
    required: bool = False
    #: A regular expression the whole value must match.
    pattern: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
        return value


class CatalogImage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    image: str
    description: str = ""
    variables: list[ImageVariable] = Field(default_factory=list)
    #: Startup command (argv); empty keeps the image's own CMD.
    startup: list[str] = Field(default_factory=list)
    stop_signal: str = Field(default="SIGTERM", pattern=r"^SIG[A-Z0-9]{2,10}$")
    ports: list[int] = Field(default_factory=list)
    #: Offered only to this organization (None: to everyone).
    organization: int | None = Field(default=None, ge=1, le=2**31 - 1)

    @field_validator("organization", mode="before")
    @classmethod
    def _not_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number, not true or false")
        return value

    def offered_to(self, organization_id: int | None) -> bool:
        return self.organization is None or self.organization == organization_id

    @field_validator("image")
    @classmethod
    def _is_reference(cls, value: str) -> str:
        if not REFERENCE.fullmatch(value):
            raise ValueError(f"{value!r} is not a Docker image reference")
        return value


class CatalogError(Exception):
    pass


def builtin(name: str) -> Path:
    """A catalog shipped with the package (coordinator/catalogs/; config/ links to them): what a coordinator
    uses when its configuration names no catalog file."""
    return Path(str(resources.files("coordinator") / "catalogs" / name))


M = TypeVar("M", bound=BaseModel)


def read_entries(path: Path, key: str, model: type[M], what: str) -> list[M]:
    """The list under ``key`` of a catalog file (images.yaml, sizes.yaml), each entry validated; any
    problem is a CatalogError naming the file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise CatalogError(f"{what} {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{what} {path} is not valid YAML: {exc}") from exc
    try:
        return [model.model_validate(i) for i in data.get(key, [])]
    except ValidationError as exc:
        raise CatalogError(f"{path}: {exc}") from exc


class Catalog:
    """The configured images (config/images.yaml, read-only here) and those admins added through the API
    (kept in the database, loaded at start)."""

    def __init__(self, images: list[CatalogImage]) -> None:
        self.images = {i.name: i for i in images}
        self.configured = frozenset(self.images)

    def add(self, image: CatalogImage) -> None:
        self.images[image.name] = image

    def remove(self, name: str) -> None:
        self.images.pop(name, None)

    def listed(self) -> list[CatalogImage]:
        return sorted(self.images.values(), key=lambda i: i.name)

    @classmethod
    def load(cls, path: Path | None) -> Catalog:
        """The catalog file, or the built-in one (None)."""
        return cls(read_entries(path or builtin("images.yaml"), "images", CatalogImage, "image catalog"))

    def get(self, name: str) -> CatalogImage | None:
        return self.images.get(name)

    @staticmethod
    def is_reference(value: str) -> bool:
        return bool(REFERENCE.fullmatch(value))

    @staticmethod
    def resolve_variables(image: CatalogImage, given: dict[str, str]) -> dict[str, str]:
        """Defaults filled in, rules checked. Raises VariableError naming the variable."""
        env = {v.name: v.default for v in image.variables if v.default != ""}
        env.update(given)
        for var in image.variables:
            value = env.get(var.name)
            if var.required and not value:
                raise VariableError(var.name, f"is required by image {image.name!r}")
            if value is not None and var.pattern and not re.fullmatch(var.pattern, value):
                raise VariableError(var.name, f"must match {var.pattern}")
        return env
