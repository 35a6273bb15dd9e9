"""What the production image is (deploy/image.toml and the project's version): the values that
scripts/image-test checks on the built image and that the Kubernetes manifests must match."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from tests.support import ROOT


@dataclass(frozen=True)
class ImageSpec:
    name: str
    tag: str
    user: int
    group: int
    read_only_root_filesystem: bool
    tmp_size: str  # Kubernetes quantity, e.g. "16Mi"

    @property
    def reference(self) -> str:
        """`name:tag`, as the manifests and `podman images` name it."""
        return f"{self.name}:{self.tag}"

    @property
    def tmp_size_bytes(self) -> int:
        units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
        for suffix, factor in units.items():
            if self.tmp_size.endswith(suffix):
                return int(self.tmp_size.removesuffix(suffix)) * factor
        return int(self.tmp_size)


def image_spec() -> ImageSpec:
    spec = tomllib.loads((ROOT / "deploy/image.toml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return ImageSpec(
        name=spec["name"],
        tag=project["version"],
        user=spec["user"],
        group=spec["group"],
        read_only_root_filesystem=spec["read_only_root_filesystem"],
        tmp_size=spec["tmp_size"],
    )
