import warnings

import numpy as np
import pytest
from PIL import Image

from probe.models import tiny_families

warnings.filterwarnings("ignore")

FAMILIES = tiny_families()  # every family whose adapter builds a tiny model: derived from the registry


def random_image(seed: int, height: int, width: int) -> Image.Image:
    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")
    return Image.fromarray(pixels)


def user_turn(question: str, with_image: bool = True) -> list[dict]:
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


@pytest.fixture
def rng_image():
    return random_image


@pytest.fixture(scope="session", autouse=True)
def tasks_dir(tmp_path_factory):
    """The offline tasks' lmms-eval files, built once per test session into a temporary folder."""
    import os

    folder = tmp_path_factory.mktemp("lmms_tasks")
    os.environ["PROBE_TASKS_DIR"] = str(folder)
    return folder


def bench_module(name: str):
    """A script of ``bench/`` imported as a module (its helpers serve the tests too)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
