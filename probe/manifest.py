"""Run manifests and atomic writes: everything a run did, and nothing half-written."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "lmms-eval", "probe-lvlm")


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide a run's numbers, plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def write_dir_atomic(out: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` write into a temporary sibling folder, then move it to ``out`` in one step."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        fill(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class RecordError(FileNotFoundError):
    """A pruning record (manifest or grid cell record) that is missing or lacks what is asked of it."""


def read_atv_blocks(source: Path) -> list[dict]:
    """Per-block ATV records from a pruned checkpoint's ``manifest.json``, a grid cell record (.json), or
    a folder holding a manifest."""
    path = source / "manifest.json" if source.is_dir() else source
    if not path.is_file():
        raise RecordError(f"no pruning record at {path}")
    blocks = json.loads(path.read_text()).get("atv_blocks") or []
    if not blocks:
        raise RecordError(f"{path} holds no ATV block records (not an ATV run)")
    return blocks


def kept_visual_total(source: Path) -> int:
    """Visual tokens an ATV run kept over all blocks and samples (see :func:`read_atv_blocks`)."""
    return sum(int(block["visual_kept"]) for block in read_atv_blocks(source))
