"""The offline tasks as lmms-eval task files over local data.

The task YAMLs ship in ``probe/evaluation/tasks/``; :func:`build_task_files` copies them into a tasks
folder and writes each task's splits beside them as Parquet files built from the installed packages
(:mod:`probe.data.offline`). lmms-eval then reads the folder like any task directory
(``TaskManager(include_path=...)``). The functions the YAMLs name (``doc_to_visual``,
``doc_to_text``, ``process_results``) live here.

    python -m probe.evaluation.task_files [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

from PIL import Image

from probe.core.progress import quiet_libraries
from probe.data.offline import (
    DEBIAN_SOURCES,
    TASK_BUILDERS,
    OfflineDataError,
    VQAItem,
    fortunes_available,
    quote_completion,
)

TASK_YAMLS = Path(__file__).parent / "tasks"
VISUAL_TASKS = tuple(TASK_BUILDERS)
TEXT_TASKS = ("quote_completion",)
OFFLINE_TASKS = VISUAL_TASKS + TEXT_TASKS
# the harder visual tasks, multiple choice scored by the log-likelihood of each option (preset offline-hard)
CHOICE_TASKS = ("emoji_names", "clipart_category", "opencv_digits")
SPLITS = {"fashion_mnist": ("train", "test"), "digits": ("train", "test"), "skimage_photos": ("test",),
          "quote_completion": ("test",), **{task: ("train", "test") for task in CHOICE_TASKS}}
TASK_PRESETS = {"offline": ("fashion_mnist", "digits", "quote_completion", "skimage_photos"),
                "offline-hard": CHOICE_TASKS}
BUILD_STAMP = ".probe-tasks-version"
TASK_FILES_VERSION = "2"


def default_tasks_dir() -> Path:
    """Where the task files live: ``$PROBE_TASKS_DIR`` or ``~/.cache/probe/lmms_tasks``."""
    return Path(os.environ.get("PROBE_TASKS_DIR", Path.home() / ".cache" / "probe" / "lmms_tasks"))


def task_data_available(task: str) -> bool:
    """Whether the packages a task's data comes from are installed here."""
    if task in DEBIAN_SOURCES:
        return DEBIAN_SOURCES[task]()
    if task == "quote_completion":
        return fortunes_available()
    return task in OFFLINE_TASKS


def built_tasks(folder: Path | None = None) -> list[str]:
    """Offline tasks whose YAML and data files are in ``folder``."""
    folder = folder or default_tasks_dir()
    return [t for t in OFFLINE_TASKS
            if (folder / f"{t}.yaml").is_file() and all((folder / t / f"{s}.parquet").is_file() for s in SPLITS[t])]


def _png(image: Image.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _visual_rows(items: list[VQAItem]) -> dict[str, list]:
    return {"id": [i.item_id for i in items], "image": [_png(i.image()) for i in items],
            "question": [i.question for i in items], "answer": [i.answer for i in items],
            "choices": [list(i.choices) for i in items]}


def _write_parquet(rows: dict[str, list], path: Path, with_image: bool) -> None:
    import datasets

    features = {"id": datasets.Value("string")}
    if with_image:
        features.update(image=datasets.Image(), question=datasets.Value("string"), answer=datasets.Value("string"),
                        choices=datasets.Sequence(datasets.Value("string")))
    else:
        features.update(prefix=datasets.Value("string"), endings=datasets.Sequence(datasets.Value("string")),
                        answer=datasets.Value("int64"))
    dataset = datasets.Dataset.from_dict(rows, features=datasets.Features(features))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with quiet_libraries():  # a bar per file is noise next to the one line that says what was built
        dataset.to_parquet(str(tmp))
    tmp.replace(path)


def build_task_files(folder: Path | None = None, tasks: list[str] | None = None) -> list[str]:
    """Write the task YAMLs and the data of every task available here into ``folder``; returns the
    tasks written. Tasks whose source package is missing are left out (and said so by the caller)."""
    folder = folder or default_tasks_dir()
    wanted = [t for t in (tasks or OFFLINE_TASKS) if task_data_available(t)]
    folder.mkdir(parents=True, exist_ok=True)
    for yaml_file in TASK_YAMLS.glob("*.yaml"):
        shutil.copyfile(yaml_file, folder / yaml_file.name)
    for task in wanted:
        for split in SPLITS[task]:
            path = folder / task / f"{split}.parquet"
            if task in TEXT_TASKS:
                items = quote_completion(split)
                rows = {"id": [i.item_id for i in items], "prefix": [i.prefix for i in items],
                        "endings": [list(i.endings) for i in items], "answer": [i.answer for i in items]}
                _write_parquet(rows, path, with_image=False)
            else:
                _write_parquet(_visual_rows(TASK_BUILDERS[task](split)), path, with_image=True)
    (folder / BUILD_STAMP).write_text(TASK_FILES_VERSION)
    return wanted


def ensure_task_files(folder: Path | None = None) -> Path:
    """Build the task files into ``folder`` unless a build of this version is there already."""
    folder = folder or default_tasks_dir()
    stamp = folder / BUILD_STAMP
    if folder.exists() and not folder.is_dir():
        raise OfflineDataError(f"the offline tasks' folder {folder} is a file; point PROBE_TASKS_DIR at a folder")
    if not stamp.is_file() or stamp.read_text() != TASK_FILES_VERSION:
        try:
            build_task_files(folder)
        except OSError as exc:
            raise OfflineDataError(f"cannot write the offline tasks into {folder} ({exc.strerror or exc}); point "
                                   "PROBE_TASKS_DIR (or HOME) at a folder this user can write") from None
    if not built_tasks(folder):
        raise OfflineDataError(f"no offline task could be built in {folder}")
    return folder


# --- functions named by the task YAMLs --------------------------------------------------------------
def doc_to_visual(doc: dict[str, Any]) -> list[Image.Image]:
    """The item's image, as RGB."""
    return [doc["image"].convert("RGB")]


def doc_to_no_visual(doc: dict[str, Any]) -> list[Image.Image]:
    """Text-only tasks have no image."""
    return []


def doc_to_text(doc: dict[str, Any]) -> str:
    """The question (multiple-choice options are part of it)."""
    return doc["question"]


def normalize_answer(text: str) -> str:
    """First line, without surrounding whitespace, quotes or a final full stop; lower case."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.strip().strip("\"'").rstrip(".").strip().lower()


def is_correct(prediction: str, answer: str, choices: list[str] | None = None) -> bool:
    """Exact match after normalisation; for lettered choices, the leading letter."""
    said = normalize_answer(prediction)
    if choices:
        match = re.match(r"\(?([a-d])\b", said)
        return bool(match) and match.group(1) == answer.lower()
    return said == answer.lower()


def doc_to_choice_index(doc: dict[str, Any]) -> int:
    """The position of the gold answer among the item's options."""
    return list(doc["choices"]).index(doc["answer"])


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the generated answer."""
    return {"exact_match": float(is_correct(results[0], doc["answer"], doc.get("choices")))}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the offline tasks' lmms-eval files.")
    parser.add_argument("--out", type=Path, default=None, help=f"tasks folder (default: {default_tasks_dir()})")
    args = parser.parse_args()
    written = build_task_files(args.out)
    folder = args.out or default_tasks_dir()
    print(f"offline tasks written to {folder}: {', '.join(written)}")
    for task in OFFLINE_TASKS:
        if task not in written:
            print(f"  {task}: left out, its source package is not installed (see docs/getting-started.md)")


if __name__ == "__main__":
    main()
