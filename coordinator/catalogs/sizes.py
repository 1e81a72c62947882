"""The size catalog (config/sizes.yaml): named resource shapes the servers and client dialects order by,
as a cloud's instance types ("small" = 512 MiB, half a core, 2 GiB disk, 1 concurrent job)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from coordinator.catalogs.images import CatalogError, builtin, read_entries


class Size(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    description: str = ""
    #: Memory limit in MiB.
    memory: int = Field(ge=4)
    #: CPU in percent of one core (100 = one core).
    cpu: int = Field(ge=1)
    #: Disk in MiB (what placement reserves on the node).
    disk: int = Field(0, ge=0)
    #: What the servers dialect reports as `capacity` (e.g. concurrent builds a runner of this size takes).
    capacity: int = Field(1, ge=1)
    #: Bandwidth cap each way in Mbps (0: none), enforced by the agent.
    bandwidth: int = Field(0, ge=0)


class SizeCatalogError(CatalogError):
    pass


class SizeCatalog:
    def __init__(self, sizes: list[Size]) -> None:
        self.sizes = {s.name: s for s in sizes}

    @classmethod
    def load(cls, path: Path | None) -> SizeCatalog:
        """The size file, or the built-in one (None)."""
        path = path or builtin("sizes.yaml")
        try:
            sizes = read_entries(path, "sizes", Size, "size catalog")
        except CatalogError as exc:
            raise SizeCatalogError(str(exc)) from exc
        names = [s.name for s in sizes]
        if len(set(names)) != len(names):
            raise SizeCatalogError(f"{path}: a size name is listed twice")
        return cls(sizes)

    def get(self, name: str) -> Size | None:
        return self.sizes.get(name)

    def listed(self) -> list[Size]:
        return sorted(self.sizes.values(), key=lambda s: (s.memory, s.cpu, s.name))
