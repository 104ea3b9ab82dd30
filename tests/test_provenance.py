"""Records that can be checked: the code revision, and tables that say where their cells were computed
differently."""

import json
import subprocess

from analysis.provenance import load_records, provenance_note
from probe.core.manifest import code_revision
from probe.core.record import RunRecord


def _record(cell: str, transformers: str = "5.25.0", commit: str | None = "a" * 40, dtype: str = "float32",
            cpu: str = "Example CPU") -> dict:
    return {"settings": {}, "method": "wanda", "dtype": dtype, "device": "cpu",
            "versions": {"torch": "2.13.0", "transformers": transformers},
            "code": {"commit": commit, "dirty": False} if commit else {},
            "context": {"cell": cell, "machine": {"cpu": cpu, "cpu_capability": "AVX512"}}}


def test_cells_computed_alike_need_no_note():
    records = {c: _record(c) for c in ("dense", "wanda/50%", "atv/50%")}
    assert provenance_note(records) == ""


def test_the_note_names_each_difference_and_what_was_not_recorded():
    records = {"dense": _record("dense", transformers="5.23.0", commit=None, dtype=""),
               "wanda/50%": _record("wanda/50%"), "atv/50%": _record("atv/50%", cpu="Other CPU")}
    note = provenance_note(records)
    assert "- transformers: 5.23.0 (dense); 5.25.0 (wanda/50%, atv/50%)" in note
    assert "- code revision: not recorded (dense); aaaaaaaaaaaa (wanda/50%, atv/50%)" in note
    assert "- dtype: not recorded (dense); float32 (wanda/50%, atv/50%)" in note
    assert "- machine: Example CPU, AVX512 (dense, wanda/50%); Other CPU, AVX512 (atv/50%)" in note
    assert "torch" not in note.replace("transformers", "") and "device" not in note
    assert provenance_note(records, {"wanda/50%"}) == ""  # only the cells of the table count


def test_records_are_read_from_a_grid_folder(tmp_path):
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "wanda_50.json").write_text(json.dumps(_record("wanda/50%")))
    (tmp_path / "cells" / "broken.json").write_text("{")
    assert list(load_records(tmp_path)) == ["wanda/50%"]


def test_code_revision_is_the_commit_and_whether_the_code_changed(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "engine.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert code_revision(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "results.csv").write_text("a\n")  # results written into the tree are not code
    assert code_revision(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "probe" / "engine.py").write_text("x = 2\n")
    assert code_revision(tmp_path) == {"commit": head, "dirty": True}
    inner = tmp_path / "venv" / "site-packages"  # an installed copy inside another work tree: its version
    inner.mkdir(parents=True)
    assert set(code_revision(inner)) == {"version"}


def test_records_written_before_the_code_revision_existed_claim_none():
    record = RunRecord.from_dict({"settings": {}, "method": "wanda"})
    assert record.code == {} and record.versions == {}
    assert RunRecord(settings={}, method="wanda").code  # a new record names this code


def test_a_process_names_the_code_it_started_from(monkeypatch):
    from probe.core import manifest

    monkeypatch.setattr(manifest, "_STARTED_FROM", {})
    first = manifest.process_code_revision()
    assert first == code_revision()
    monkeypatch.setattr(manifest, "code_revision", lambda root=None: {"commit": "b" * 40, "dirty": True})
    assert manifest.process_code_revision() == first  # the tree changed while it ran: the start counts
