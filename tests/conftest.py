import json
import types

import nbformat
import pytest

from lab import paths
from lab.sweep import build_record


def notebook_chapter(path, source: str):
    """A stand-in chapter (id, ready, notebook) whose notebook is one code cell of `source`."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return types.SimpleNamespace(id="mode-interpolation", ready=True, notebook=path)


def make_record(folder, held, *, chapter="mode-interpolation", scale="tiny", claim="C1",
                at_least=0.5, source_hash=None, commit="abc1234"):
    """A sweep record as `python -m lab sweep` writes it: one claim (``≥ at_least``), seed i
    measuring 0.9 where ``held[i]`` and 0.1 where not."""
    runs = {seed: {"seed": seed, "wall_s": 2.0, "cached_runs": 0, "claims": [{
        "id": claim, "text": "a claim", "threshold": f"≥ {at_least:.3g}", "at_least": at_least,
        "at_most": None, "paper": "the paper's level", "measured": 0.9 if ok else 0.1,
        "display": "0.9" if ok else "0.1", "reproduced": ok, "versions": {"torch": "2.0"}}]}
        for seed, ok in enumerate(held)}
    provenance = {"commit": commit, "dirty": False, "lab_source_hash": source_hash or paths.source_hash(chapter),
                  "lab": "0.1.0", "date": "2026-01-05T10:00:00Z", "hardware": "Test CPU", "torch": "2.0",
                  "jobs": 1, "wall_s": 16.0, "runs": []}
    path = paths.record_path(chapter, scale, folder)
    paths.atomic_write_text(path, json.dumps(build_record(chapter, scale, runs, provenance)))
    return path


@pytest.fixture
def records_dir(tmp_path, monkeypatch):
    """An empty records folder in place of book/records, for this process and the kernels it starts."""
    folder = tmp_path / "records"
    folder.mkdir()
    monkeypatch.setenv("LAB_RECORDS_DIR", str(folder))
    return folder
