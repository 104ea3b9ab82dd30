"""Run manifests and atomic writes: everything a run did, and nothing half-written."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from probe.errors import OutputError

PACKAGES = ("torch", "transformers", "lmms-eval", "probe-lvlm")
WRITE_ERRORS = (OSError, SafetensorError)
TEMP_NAME_ROOM = 40  # an atomic write's temporary sibling adds its writer (host, process) and a random part
INNER_PATH_ROOM = 96  # an output folder's own files (cells/<cell>.json, partial/<cell>/<task>.items.csv) below it


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide a run's numbers, plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


CODE_PATHS = ("probe", "analysis", "pyproject.toml")  # what decides the numbers, in the source tree


def code_revision(root: Path | None = None) -> dict[str, Any]:
    """Which code ran: in a git work tree of the source, its commit and whether :data:`CODE_PATHS` had
    changes not committed (``dirty``); elsewhere (an installed package) the package's version."""
    root = root or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is not None and Path(top).resolve() == root.resolve():
        commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--", *CODE_PATHS)
        if commit is not None and status is not None:
            return {"commit": commit, "dirty": bool(status)}
    try:
        return {"version": metadata.version("probe-lvlm")}
    except metadata.PackageNotFoundError:
        return {"version": None}


_STARTED_FROM: dict[str, Any] = {}


def process_code_revision() -> dict[str, Any]:
    """:func:`code_revision` as it was when this process first asked: the code it imported, even if the
    source tree changes while it runs (a long grid)."""
    if not _STARTED_FROM:
        _STARTED_FROM.update(code_revision())
    return dict(_STARTED_FROM)


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
    Temporary folders that a killed writer left (named for their host and process) are removed first,
    and every file and folder written gets the mode the user's umask gives a new one.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=_temp_prefix(out, "new")))
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    old = None
    try:
        fill(tmp)
        _default_modes(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=_temp_prefix(out, "old")))
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


HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def _temp_prefix(out: Path, kind: str) -> str:
    """``.<name>.<kind>-<host>-<pid>.``: a temporary sibling of ``out`` that says who made it."""
    return f".{out.name}.{kind}-{HOST_TAG}-{os.getpid()}."


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove the temporary siblings of ``out`` that a writer on this host left when it was killed (its
    process is gone): unfinished new folders go; a previous ``out`` moved aside is put back where ``out``
    is missing, else removed. Returns what was removed or put back."""
    pattern = re.compile(re.escape(f".{out.name}.") + rf"(new|old)-{HOST_TAG}-(\d+)\.[^/]+$")
    handled = []
    for path in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-{HOST_TAG}-*")):
        found = pattern.match(path.name)
        if not found or not path.is_dir() or _running(int(found.group(2))):
            continue
        if found.group(1) == "old" and not out.exists():
            os.replace(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)
        handled.append(path)
    return handled


def _default_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes the user's umask gives new files and folders (some
    writers, safetensors among them, create their files 0600)."""
    _default_mode(folder, directory=True)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            _default_mode(Path(root) / name, directory=True)
        for name in files:
            if not os.path.islink(Path(root) / name):
                _default_mode(Path(root) / name, directory=False)


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


def check_name_lengths(target: Path, inner: int = 0) -> None:
    """Raise :class:`OutputError` if ``target`` cannot be made on its file system for the length of a name in
    it (with room for an atomic write's temporary name) or of the whole path (with ``inner`` more bytes for
    what goes below it). Looks at no path longer than the system allows."""
    resolved = Path(os.path.abspath(target))
    base = resolved
    while not os.path.isdir(base) and base != base.parent:
        base = base.parent
    name_max, path_max = _pathconf(base, "PC_NAME_MAX", 255), _pathconf(base, "PC_PATH_MAX", 4096)
    new_parts = resolved.parts[len(base.parts):]
    for i, part in enumerate(new_parts):
        allowed = name_max - (TEMP_NAME_ROOM if i == len(new_parts) - 1 else 0)
        if len(os.fsencode(part)) > allowed:
            raise OutputError(f"cannot write {str(target)[:60]}...: the name {part[:24]}... is "
                              f"{len(os.fsencode(part))} bytes and at most {allowed} fit on this file system")
    if len(os.fsencode(str(resolved))) + TEMP_NAME_ROOM + inner > path_max:
        raise OutputError(f"cannot write {str(target)[:60]}...: the path is {len(os.fsencode(str(resolved)))} bytes "
                          f"and this file system allows {path_max - TEMP_NAME_ROOM - inner} for it")


def _pathconf(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError):
        return default


def check_output_dir(out: Path, marker: str | None = None) -> None:
    """Raise :class:`OutputError` before any work if ``out`` cannot become an output folder: it is the
    current folder or one above it, an existing file, under a file, or in a place this user cannot
    write. An existing non-empty folder is accepted only if it holds ``marker`` (a file an earlier run
    of the same kind wrote, e.g. ``manifest.json``), since it would be replaced or resumed."""
    check_name_lengths(out, inner=INNER_PATH_ROOM)
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
    check_name_lengths(path)
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder; name a file")
    _check_writable(path, path.resolve().parent)
