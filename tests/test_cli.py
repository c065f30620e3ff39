import json
import subprocess
import sys
import types

import nbformat
import pytest

from lab import cli


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, env=env)


def test_list_names_every_chapter():
    out = run_cli("list")
    assert out.returncode == 0
    for cid in ("mode-interpolation", "ect", "arimec", "mimetic-init", "mohawk", "ado", "context-inversion",
                "clip-differences", "prompt-recovery", "fuse"):
        assert cid in out.stdout


@pytest.mark.parametrize("args, message", [
    (("run", "nope"), "chapter must be one of mode-interpolation"),
    (("run", "mode-interpolation", "--seed", "1.5"), "--seed must be an integer"),
    (("run", "mode-interpolation", "--scale", "huge"), "invalid choice: 'huge'"),
    (("frobnicate",), "invalid choice"),
])
def test_bad_arguments_are_named(args, message):
    out = run_cli(*args)
    assert out.returncode == 2 and message in out.stderr


def test_bad_environment_is_named(monkeypatch):
    import os
    env = dict(os.environ, LAB_SEED="abc")
    out = run_cli("run", "mode-interpolation", env=env)
    assert out.returncode == 2 and "LAB_SEED must be an integer" in out.stderr


def test_chapter_not_written_yet():
    from lab.chapters import CHAPTERS
    pending = [c.id for c in CHAPTERS if not c.ready]
    if not pending:
        pytest.skip("every chapter is written")
    assert cli.main(["run", pending[0]]) == 2


def fake_chapter(tmp_path, measured):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from lab import start\n"
        "s, cfg, ledger = start('mode-interpolation')\n"
        f"ledger.check('C1', 'a claim', {measured}, at_least=0.5)\n"
        "ledger.check('C2', 'another', 1.0, at_least=0.5)\n"
        "ledger.summary()")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "fake.ipynb"
    nbformat.write(nb, path)
    return types.SimpleNamespace(id="mode-interpolation", ready=True, notebook=path)


@pytest.fixture
def results(tmp_path, monkeypatch):
    for var in ("LAB_SCALE", "LAB_SEED", "LAB_RUN_ID", "LAB_EXPLORERS"):
        monkeypatch.setenv(var, "")
    monkeypatch.setenv("LAB_SCALE", "tiny")
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


def test_run_prints_claims_and_publishes(tmp_path, results, monkeypatch, capsys):
    monkeypatch.setattr(cli, "get", lambda cid: fake_chapter(tmp_path, 0.9))
    assert cli.main(["run", "mode-interpolation", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "C1" in out and "C2" in out and "yes" in out
    record = json.loads((results / "mode-interpolation.json").read_text())
    assert record["seed"] == 4 and record["complete"] and len(record["claims"]) == 2
    assert cli.main(["ledger"]) == 0
    assert "scale tiny, seed 4" in capsys.readouterr().out


def test_failed_run_exits_non_zero_and_leaves_nothing_half_written(tmp_path, results, monkeypatch, capsys):
    monkeypatch.setattr(cli, "get", lambda cid: fake_chapter(tmp_path, 0.9))
    assert cli.main(["run", "mode-interpolation"]) == 0
    before = (results / "mode-interpolation.json").read_text()
    monkeypatch.setattr(cli, "get", lambda cid: fake_chapter(tmp_path, 0.1))
    assert cli.main(["run", "mode-interpolation"]) == 1
    captured = capsys.readouterr()
    assert "NO" in captured.out and "FAILED" in captured.err
    assert not (results / ".staging" / "mode-interpolation.json").exists()
    assert (results / "mode-interpolation.json").read_text() == before   # the last complete run stays
