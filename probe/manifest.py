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

from safetensors import SafetensorError

from probe.errors import OutputError

PACKAGES = ("torch", "transformers", "lmms-eval", "probe-lvlm")
WRITE_ERRORS = (OSError, SafetensorError)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide a run's numbers, plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, directory: bool) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (0600/0700) the mode the user's umask gives any new one."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename; a failed write leaves neither."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename; a failed write leaves neither."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        _default_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def write_dir_atomic(out: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` write into a temporary sibling folder, then move it to ``out`` in one step.

    Whatever fails on the way (a full disk, a permission, an interruption), neither a partial ``out``
    nor the temporary folder is left behind, and a folder that was at ``out`` before stays as it was.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    old = None
    try:
        fill(tmp)
        _default_mode(tmp, directory=True)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.replace(old, out)
            old = None
        if isinstance(exc, WRITE_ERRORS):  # safetensors reports a full disk as its own error type
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise OutputError(f"cannot write {out}: {reason}") from exc
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(target: Path, parent: Path) -> None:
    """Raise :class:`OutputError` unless something can be created where ``parent`` (or its nearest existing
    ancestor) is: a folder there is made and removed, which fails on a read-only file system even for root."""
    base = _nearest_existing(parent)
    if not base.is_dir():
        raise OutputError(f"cannot write {target}: {base} is a file, not a folder")
    try:
        probe_dir = tempfile.mkdtemp(dir=base, prefix=".probe-write-check.")
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {base} is not writable ({exc.strerror or exc})") from exc
    os.rmdir(probe_dir)


def check_output_dir(out: Path, marker: str | None = None) -> None:
    """Raise :class:`OutputError` before any work if ``out`` cannot become an output folder: it is the
    current folder or one above it, an existing file, under a file, or in a place this user cannot
    write. An existing non-empty folder is accepted only if it holds ``marker`` (a file an earlier run
    of the same kind wrote, e.g. ``manifest.json``), since it would be replaced or resumed."""
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise OutputError(f"--out {out} is the current folder or one above it; name a new folder")
    if out.is_file():
        raise OutputError(f"--out {out} is an existing file; name a folder")
    if out.is_dir() and any(out.iterdir()) and marker is not None and not (out / marker).is_file():
        raise OutputError(f"--out {out} is a folder holding other files (no {marker}); name a new or empty folder")
    _check_writable(out, resolved.parent)


def check_free_space(out: Path, needed_bytes: int) -> None:
    """Raise :class:`OutputError` if the file system of ``out`` has less than ``needed_bytes`` free."""
    free = shutil.disk_usage(_nearest_existing(out.resolve())).free
    if free < needed_bytes:
        raise OutputError(f"cannot write {out}: it needs about {human_bytes(needed_bytes)} and "
                          f"{human_bytes(free)} are free")


def human_bytes(n: float) -> str:
    """``n`` bytes as B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.2f} GiB"


def check_output_file(path: Path) -> None:
    """Raise :class:`OutputError` before any work if ``path`` cannot be written as a file."""
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder; name a file")
    _check_writable(path, path.resolve().parent)
