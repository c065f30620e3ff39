import json
import subprocess
import sys

import pytest

from conftest import make_record, notebook_chapter
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


def fake_chapter(tmp_path, measured, before_summary=""):
    return notebook_chapter(tmp_path / "fake.ipynb",
                            "from lab import start\n"
                            "s, cfg, ledger = start('mode-interpolation')\n"
                            f"ledger.check('C1', 'a claim', {measured}, at_least=0.5)\n"
                            "ledger.check('C2', 'another', 1.0, at_least=0.5)\n"
                            + before_summary + "ledger.summary()")


@pytest.fixture
def results(tmp_path, monkeypatch, records_dir):
    for var in ("LAB_SCALE", "LAB_SEED", "LAB_RUN_ID", "LAB_EXPLORERS"):
        monkeypatch.setenv(var, "")
    monkeypatch.setenv("LAB_SCALE", "tiny")
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


def test_run_prints_claims_and_publishes(tmp_path, results, monkeypatch, capsys):
    cached = "import lab.train\nlab.train._cached_runs += 2   # as if two runs resumed finished\n"
    monkeypatch.setattr(cli, "get", lambda cid: fake_chapter(tmp_path, 0.9, cached))
    assert cli.main(["run", "mode-interpolation", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "C1" in out and "C2" in out and "yes (reported · no sweep record at this scale)" in out
    assert "(from cached checkpoints)" in out
    record = json.loads((results / "mode-interpolation.json").read_text())
    assert record["seed"] == 4 and record["complete"] and len(record["claims"]) == 2
    assert record["cached_runs"] == 2
    assert cli.main(["ledger"]) == 0
    out = capsys.readouterr().out
    assert "scale tiny · seed 4" in out and "s (from cached checkpoints)" in out


def test_failed_run_replaces_the_passing_result_and_the_ledger_shows_it(tmp_path, results, records_dir,
                                                                        monkeypatch, capsys):
    make_record(records_dir, [True] * 8)           # C1 held on seeds 0-7: it gates
    monkeypatch.setattr(cli, "get", lambda cid: fake_chapter(tmp_path, 0.9))
    assert cli.main(["run", "mode-interpolation"]) == 0
    assert "yes (gating · held on 8 of 8 seeds)" in capsys.readouterr().out
    monkeypatch.setattr(cli, "get", lambda cid: fake_chapter(tmp_path, 0.1))
    assert cli.main(["run", "mode-interpolation"]) == 1
    captured = capsys.readouterr()
    assert "NO (gating" in captured.out and "FAILED: ClaimFailed" in captured.err
    assert not (results / ".staging" / "mode-interpolation.json").exists()
    record = json.loads((results / "mode-interpolation.json").read_text())
    assert not record["complete"] and "C1 did not reproduce" in record["failed"]
    assert [c["display"] for c in record["claims"]] == ["0.1"]     # what the failed run measured
    assert cli.main(["ledger"]) == 0
    out = capsys.readouterr().out
    assert "FAILED: ClaimFailed" in out and "0.1" in out and "0.9" not in out


def test_crashed_run_is_published_as_failed(tmp_path, results, monkeypatch, capsys):
    crash = "raise RuntimeError('the chapter crashed')\n"
    monkeypatch.setattr(cli, "get", lambda cid: fake_chapter(tmp_path, 0.9, crash))
    assert cli.main(["run", "mode-interpolation"]) == 1
    assert "RuntimeError: the chapter crashed" in capsys.readouterr().err
    record = json.loads((results / "mode-interpolation.json").read_text())
    assert record["failed"] == "RuntimeError: the chapter crashed" and len(record["claims"]) == 2
    assert cli.main(["ledger"]) == 0
    assert "FAILED: RuntimeError: the chapter crashed" in capsys.readouterr().out


def test_ledger_follows_book_order_and_names_what_is_missing(tmp_path, results, records_dir, capsys):
    from lab.chapters import CHAPTERS
    results.mkdir()
    for chapter in ("arimec", "mode-interpolation"):
        (results / f"{chapter}.json").write_text(json.dumps({
            "chapter": chapter, "scale": "tiny", "seed": 0, "finished": "2026-01-01 00:00:00", "wall_s": 5,
            "complete": True, "claims": []}))
    make_record(records_dir, [True] * 8, scale="gpu", source_hash="0" * 16)
    assert cli.main(["ledger"]) == 0
    out = capsys.readouterr().out
    ready = [c.id for c in CHAPTERS if c.ready]
    positions = [out.index(f"## {cid} ") for cid in ready]
    assert positions == sorted(positions)
    assert "## ect — not run in this build" in out
    assert "gpu sweep · 8 seeds · 2026-01-05 · measured on older code, commit abc1234" in out
    assert "worst 0.9 (seed 0) · held on 8 of 8" in out
    not_at_gpu = out.split("not yet swept at gpu scale: ")[1].splitlines()[0]
    assert "mode-interpolation" not in not_at_gpu and "ect" in not_at_gpu
    if len(ready) < len(CHAPTERS):
        assert out.rindex("chapters to come:") > positions[-1]
