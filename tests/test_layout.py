"""The package's layout follows the pipeline: every import of a probe module points at its own stage or an
earlier one, so a stage can be read without the ones after it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "probe"

# the stages in pipeline order; a module may import its own stage and earlier ones
STAGES = [
    ["probe.errors"],
    ["probe.core"],
    ["probe.models", "probe.reference"],  # loading builds the offline reference models on first use
    ["probe.data"],
    ["probe.calibration"],
    ["probe.pruning"],
    ["probe.token_pruning"],
    ["probe.evaluation"],
    ["probe.reference.train", "probe.reference.report", "probe.contract"],  # train and score on the tasks
    ["probe.experiments"],
    ["probe.api"],
    ["probe.cli"],
]


def stage(module: str) -> int:
    """The stage of a dotted module name: the one whose longest prefix matches."""
    matches = [(len(prefix), i) for i, prefixes in enumerate(STAGES) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} belongs to no stage"
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def probe_imports(path: Path) -> list[str]:
    """Every probe module a file imports, at its top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("probe"):
            found += [f"{node.module}.{a.name}" if node.module == "probe" else node.module for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("probe")]
    return found


def test_imports_flow_down_the_pipeline():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = module_name(path)
        for target in probe_imports(path):
            if stage(target) > stage(own):
                upward.append(f"{own} imports {target}")
    assert upward == []


def test_the_top_level_holds_stages_not_loose_modules():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "api.py", "errors.py"]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert set(packages) == {prefix.split(".")[1] for prefixes in STAGES for prefix in prefixes
                             if prefix.count(".") == 1} - {"errors", "api"}


def test_the_stage_check_catches_an_upward_import(tmp_path):
    # the check itself: a module of an early stage importing a later one is found
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from probe.experiments.grid import run_grid\n")
    assert [stage(t) > stage("probe.calibration.capture") for t in probe_imports(bad)] == [True]
