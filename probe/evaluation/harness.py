"""Evaluation through lmms-eval, in process: task presets, a tidy results table, retention.

    evaluate(loaded, ["digits", "quote_completion"], limit=40)   # -> DataFrame: task, metric, score, n

Offline tasks (ours) are read from the task files folder (:mod:`probe.evaluation.task_files`); any
other name is one of lmms-eval's own tasks, whose data comes from the Hugging Face hub.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from probe.core.manifest import write_text_atomic
from probe.core.progress import quiet_libraries
from probe.errors import ProbeError
from probe.evaluation.data_parallel import data_parallel_rank, start_data_parallel
from probe.evaluation.task_files import OFFLINE_TASKS, TASK_PRESETS, built_tasks, ensure_task_files
from probe.evaluation.uncertainty import standard_error
from probe.models.loading import LoadedModel
from probe.models.vision_cache import VisionFeatureCache

PRESETS = {
    "paper9": ["gqa", "mmbench_en_dev", "mme", "mmmu_val", "ok_vqa_val2014", "pope", "scienceqa_img",
               "textvqa_val", "vizwiz_vqa_val"],
    "table1": ["mmbench_en_dev", "scienceqa_img", "vizwiz_vqa_val"],
}
# the metric each task is ranked by (the benchmark's official one); MME adds its two parts
PRIMARY_METRIC = {
    "gqa": "exact_match", "mmbench_en_dev": "gpt_eval_score", "mme": "total", "mmmu_val": "mmmu_acc",
    "ok_vqa_val2014": "exact_match", "pope": "pope_accuracy", "scienceqa_img": "exact_match",
    "textvqa_val": "exact_match", "vizwiz_vqa_val": "exact_match",
    "fashion_mnist": "exact_match", "digits": "exact_match", "skimage_photos": "exact_match",
    "quote_completion": "acc", "emoji_names": "acc", "clipart_category": "acc", "opencv_digits": "acc",
}
MME_PARTS = ("mme_perception_score", "mme_cognition_score")


class UnknownTaskError(ProbeError):
    """A task list naming nothing, or an offline task whose data is not built here."""


class CacheFolderError(ProbeError):
    """A cache folder the evaluation writes (the datasets cache) that cannot be written."""


class HubUnavailableError(ProbeError):
    """A hub task requested where the Hugging Face hub cannot be reached."""


def resolve_tasks(spec: str, tasks_dir: Path | None = None) -> list[str]:
    """Expand presets (``paper9``, ``table1``, ``offline``, ``offline-hard``) in a comma-separated task
    list, and check that every task can run here (offline data built, the hub reachable for hub tasks).
    An offline preset stands for those of its tasks whose data can be built here."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part in TASK_PRESETS:
            built = [t for t in built_tasks(ensure_task_files(tasks_dir)) if t in TASK_PRESETS[part]]
            if not built:
                raise UnknownTaskError(f"none of the tasks of preset {part!r} ({', '.join(TASK_PRESETS[part])}) can "
                                       "be built here: their source packages are missing (see docs/getting-started.md)")
            names += built
        else:
            names += PRESETS.get(part, [part])
    if not names:
        raise UnknownTaskError(f"no task named in {spec!r}; presets: {', '.join([*TASK_PRESETS, *PRESETS])}")
    offline = [t for t in names if t in OFFLINE_TASKS]
    if offline:
        available = built_tasks(ensure_task_files(tasks_dir))
        missing = [t for t in offline if t not in available]
        if missing:
            raise UnknownTaskError(
                f"offline task(s) {', '.join(missing)} cannot be built here (their source package is missing; "
                f"see docs/getting-started.md); available: {', '.join(available)}"
            )
    names = list(dict.fromkeys(names))
    check_hub_tasks(names)
    check_datasets_cache()
    return names


def datasets_cache_dir() -> Path:
    """The folder where lmms-eval keeps the tasks' datasets: ``$LMMS_EVAL_DATASETS_CACHE``, else
    ``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets`` (``~/.cache/huggingface/datasets``)."""
    explicit = os.getenv("LMMS_EVAL_DATASETS_CACHE", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    home = os.getenv("HF_HOME", "~/.cache/huggingface")
    return Path(os.getenv("HF_DATASETS_CACHE", os.path.join(home, "datasets"))).expanduser()


def check_datasets_cache() -> None:
    """Raise :class:`CacheFolderError` before any model work if the datasets cache cannot be written."""
    import tempfile

    folder = datasets_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=folder, prefix=".probe-write-check."))
    except OSError as exc:
        raise CacheFolderError(f"the datasets cache {folder} cannot be written ({exc.strerror or exc}); point "
                               "HF_HOME (or HF_DATASETS_CACHE, or HOME) at a folder this user can write") from None


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be used: offline mode is off and its host name resolves."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def check_hub_tasks(tasks: list[str]) -> None:
    """Fail at once, not after download retries, when hub tasks are asked for without the hub."""
    hub = [t for t in tasks if t not in OFFLINE_TASKS]
    if hub and not hub_reachable():
        raise HubUnavailableError(
            f"task(s) {', '.join(hub)} read their data from the Hugging Face hub, which cannot be reached "
            f"from here (or HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set); offline tasks: {', '.join(OFFLINE_TASKS)}"
        )


SCORE_COLUMNS = ["task", "metric", "score", "stderr", "n"]
ITEM_COLUMNS = ["task", "metric", "doc_id", "value"]


def tidy_results(results: dict, items: pd.DataFrame | None = None) -> pd.DataFrame:
    """lmms-eval's results dict as rows (task, metric, score, stderr, n); MME gains a ``total`` row.
    ``stderr`` is the standard error of the mean of the per-item scores in ``items`` (NaN for metrics
    that are not a mean of per-item numbers, e.g. MME's totals)."""
    rows = []
    for task, metrics in results["results"].items():
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        values = {}
        for key, value in metrics.items():
            metric, _, _filter = key.partition(",")
            if metric == "alias" or "_stderr" in metric or not isinstance(value, (int, float)):
                continue
            values[metric] = float(value)
        if all(part in values for part in MME_PARTS):
            values["total"] = sum(values[part] for part in MME_PARTS)
        for metric, value in values.items():
            per_item = items[(items.task == task) & (items.metric == metric)].value if items is not None else []
            error = standard_error(per_item.to_numpy()) if len(per_item) == n else float("nan")
            rows.append({"task": task, "metric": metric, "score": value, "stderr": error, "n": n})
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _metric_names(results: dict, task: str) -> set[str]:
    """The metrics lmms-eval reported for ``task`` (result keys are ``metric,filter``)."""
    return {key.partition(",")[0] for key in results["results"].get(task, {})}


def item_scores(results: dict) -> pd.DataFrame:
    """Every item's numeric score per metric from lmms-eval's logged samples (task, metric, doc_id, value)."""
    rows = []
    for task, samples in (results.get("samples") or {}).items():
        metrics = _metric_names(results, task)
        for sample in samples:
            for metric in metrics & set(sample):
                value = sample[metric]
                if isinstance(value, (int, float)):  # a bool counts as 0 or 1
                    rows.append({"task": task, "metric": metric, "doc_id": sample["doc_id"], "value": float(value)})
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


def primary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a tidy table that hold each task's official metric."""
    return table[[PRIMARY_METRIC.get(t) == m for t, m in zip(table.task, table.metric)]]


def primary_scores(table: pd.DataFrame) -> pd.Series:
    """Each task's official score, indexed by task."""
    return primary_rows(table).set_index("task")["score"]


def evaluate(loaded: LoadedModel, tasks: list[str], limit: int | None = None, **kwargs: Any) -> pd.DataFrame:
    """Score a model in memory on ``tasks`` through lmms-eval; a tidy table (task, metric, score, stderr,
    n). Keyword arguments as :func:`evaluate_with_items`."""
    return evaluate_with_items(loaded, tasks, limit, **kwargs)[0]


def evaluate_with_items(
    loaded: LoadedModel,
    tasks: list[str],
    limit: int | None = None,
    tasks_dir: Path | None = None,
    vision_cache: VisionFeatureCache | None = None,
    show_progress: bool = True,
    seed: int = 0,
    loglikelihood: str = "sum",
    samples_out: Path | None = None,
    token_pruning: str | None = None,
    batch_size: int | str = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a model in memory on ``tasks`` through lmms-eval: the tidy table (task, metric, score, stderr,
    n) and every item's score (task, metric, doc_id, value), from which intervals are drawn.

    ``limit`` takes the first N items of each task. A ``vision_cache`` shared by models with the same
    vision side computes each image's features once. ``loglikelihood`` (``sum`` or ``mean``) is how
    multiple-choice options are scored (see :mod:`probe.evaluation.wrapper`). ``samples_out`` receives
    what the model answered for every item, one JSON object per line. ``token_pruning`` (e.g.
    ``fastv(k=2, ratio=0.5)``) drops visual tokens at inference; the table then says which method ran and
    how many visual tokens were alive per layer on average (``visual_tokens``); with ``samples_out``, every
    request's record (visual tokens alive at each layer, each stage's choice) goes to ``<name>.tokens.jsonl``
    beside it. ``batch_size`` (an int or ``auto``) scores that many requests at once
    (:mod:`probe.evaluation.batching`); greedy answers and log-likelihoods equal batch one's.

    Under ``torchrun`` (``WORLD_SIZE`` > 1, a process group initialised) each process scores its share of
    the requests and rank 0 returns the gathered tables; the other ranks return empty ones.
    """
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from probe.evaluation.wrapper import ProbeLVLM

    check_hub_tasks(tasks)
    offline_only = all(t in OFFLINE_TASKS for t in tasks)
    folder = ensure_task_files(tasks_dir) if any(t in OFFLINE_TASKS for t in tasks) else None
    manager = TaskManager("WARNING", include_path=str(folder) if folder else None, include_defaults=not offline_only)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UnknownTaskError(f"unknown task(s) {', '.join(unknown)} (neither offline nor an lmms-eval task)")
    rank, world = data_parallel_rank()
    start_data_parallel(str(next(loaded.model.parameters()).device))
    model = ProbeLVLM(loaded=loaded, vision_cache=vision_cache, show_progress=show_progress,
                      loglikelihood=loglikelihood, token_pruning=token_pruning, batch_size=batch_size)
    with quiet_libraries(not show_progress or rank > 0):
        results = simple_evaluate(model=model, tasks=tasks, limit=limit, task_manager=manager, log_samples=True,
                                  verbosity="WARNING", random_seed=seed, numpy_random_seed=seed,
                                  torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=0,
                                  distributed_executor_backend="torchrun" if world > 1 else "accelerate")
    if results is None:  # a rank other than 0: its scores went to rank 0
        return pd.DataFrame(columns=SCORE_COLUMNS), pd.DataFrame(columns=ITEM_COLUMNS)
    if samples_out is not None:
        write_text_atomic(samples_out, "".join(json.dumps(row) + "\n" for row in sample_rows(results)))
        if model.token_runtime is not None:  # per request: visual tokens alive at every layer, each stage
            write_text_atomic(token_records_path(samples_out),
                              "".join(json.dumps(r) + "\n" for r in model.token_runtime.records))
    items = item_scores(results)
    table = tidy_results(results, items)
    if model.token_runtime is not None:
        table = table.assign(token_pruning=model.token_runtime.pruner.spec(),
                             visual_tokens=mean_visual_tokens(model.token_runtime.records))
    return table, items


def token_records_path(samples_out: Path) -> Path:
    """Where the per-request token-pruning records go beside a samples log: ``<name>.tokens.jsonl``."""
    return samples_out.with_name(samples_out.name.removesuffix(".jsonl") + ".tokens.jsonl")


def mean_visual_tokens(records: list[dict]) -> float:
    """Visual tokens alive per decoder layer, averaged over the layers and the requests that had images."""
    per_request = [sum(r["alive_visual"]) / len(r["alive_visual"]) for r in records if r["alive_visual"]]
    return sum(per_request) / len(per_request) if per_request else float("nan")


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a logged value: lists and numbers kept, anything else as text."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def sample_rows(results: dict) -> list[dict]:
    """One row per task and item from lmms-eval's logged samples: the item, its target, what the model
    answered (after the task's filters) and the item's metrics."""
    rows = []
    for task, samples in (results.get("samples") or {}).items():
        metrics = _metric_names(results, task)
        for sample in samples:
            rows.append({"task": task, "doc_id": sample.get("doc_id"), "target": _plain(sample.get("target")),
                         "answer": _plain(sample.get("filtered_resps")),
                         **{m: _plain(sample[m]) for m in metrics & set(sample)}})
    return rows
