"""Files the coordinator hands an instance (a server's TLS CA, certificate and key) are written under the
agent's data directory and bind-mounted read-only into the container. They are rewritten before every
create, so a re-created container gets the current ones, and removed with the container.

On the host they sit in directories of mode 0700, so only root reads them; inside the container they are
world-readable (0444), because the service that needs them may not run as root."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from agent.runtime.base import ContainerSpec, Mount


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, instance_id: str) -> Path:
        if not instance_id or "/" in instance_id or instance_id.startswith("."):
            raise ValueError(f"not an instance id: {instance_id!r}")
        return self.root / instance_id

    def materialize(self, spec: ContainerSpec) -> ContainerSpec:
        """Write the spec's files (blocking, small) and return the spec with their read-only mounts."""
        if not spec.files:
            return spec
        base = self._dir(spec.instance_id)
        # Only root on the host reads them, whatever the data directory's own mode: the engine bind-mounts
        # the set's directory itself, so the container does not need its parents.
        for private in (self.root, base):
            private.mkdir(parents=True, exist_ok=True)
            os.chmod(private, 0o700)
        mounts: list[Mount] = []
        for n, fileset in enumerate(spec.files):
            if not fileset.target_dir.startswith("/"):
                raise ValueError(f"files: target {fileset.target_dir!r} is not an absolute path")
            target = base / str(n)
            # Written beside and swapped in, so a container never sees half a set.
            fresh = base / f".{n}.new"
            shutil.rmtree(fresh, ignore_errors=True)
            fresh.mkdir(parents=True, mode=0o755)
            for name, content in fileset.contents.items():
                if not name or "/" in name or name in (".", ".."):
                    raise ValueError(f"files: {name!r} is not a file name")
                path = fresh / name
                path.write_bytes(content)
                os.chmod(path, 0o444)
            if target.exists():
                shutil.rmtree(target)
            fresh.rename(target)
            mounts.append(Mount(str(target), fileset.target_dir, read_only=True))
        return replace(spec, mounts=tuple(mounts))

    def remove(self, instance_id: str) -> None:
        shutil.rmtree(self._dir(instance_id), ignore_errors=True)
