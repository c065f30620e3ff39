import json

import pytest

from conftest import make_record, notebook_chapter
from lab import cli, records, sweep


@pytest.mark.parametrize("text, seeds", [
    ("0-7", list(range(8))), ("0,2,5", [0, 2, 5]), ("3", [3]), (" 0 - 2 , 9", [0, 1, 2, 9]), ("5,1", [1, 5]),
])
def test_seeds_syntax(text, seeds):
    assert sweep.parse_seeds(text) == seeds
    assert sweep.parse_seeds(sweep.format_seeds(seeds)) == seeds


@pytest.mark.parametrize("text, message", [
    ("", "--seeds is empty"), ("  ", "--seeds is empty"),
    ("7-0", "--seeds range 7-0 is reversed; write 0-7"),
    ("a", "'a' is neither a seed nor a range"), ("0-", "'0-' is neither"), ("1-2-3", "'1-2-3' is neither"),
    ("0,,2", "'' is neither"), ("-1", "'-1' is neither"), ("1.5", "'1.5' is neither"),
    ("1,1", "names seed 1 more than once"), ("0-3,2", "names seed 2 more than once"),
])
def test_bad_seeds_are_named(text, message):
    with pytest.raises(ValueError, match="--seeds") as err:
        sweep.parse_seeds(text)
    assert message in str(err.value)


@pytest.mark.parametrize("args, message", [
    (("sweep", "nope"), "argument chapter: chapter must be one of mode-interpolation"),
    (("sweep", "ect", "--seeds", ""), "argument --seeds: --seeds is empty"),
    (("sweep", "ect", "--seeds", "3-1"), "argument --seeds: --seeds range 3-1 is reversed"),
    (("sweep", "ect", "--seeds", "0-x"), "argument --seeds: --seeds: '0-x' is neither"),
    (("sweep", "ect", "--jobs", "0"), "argument --jobs: --jobs must be a positive integer; got '0'"),
    (("sweep", "ect", "--jobs", "-2"), "argument --jobs: --jobs must be a positive integer; got '-2'"),
    (("sweep", "ect", "--jobs", "two"), "argument --jobs: --jobs must be a positive integer; got 'two'"),
    (("sweep", "ect", "--scale", "huge"), "argument --scale: invalid choice: 'huge'"),
])
def test_bad_sweep_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(list(args))
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_chapter_not_written_yet_cannot_be_swept(capsys):
    from lab.chapters import CHAPTERS
    pending = [c.id for c in CHAPTERS if not c.ready]
    if not pending:
        pytest.skip("every chapter is written")
    assert cli.main(["sweep", pending[0]]) == 2
    assert "not written yet" in capsys.readouterr().err


def seed_chapter(tmp_path, crash_on=None):
    """A chapter whose claim C1 (``seed % 3 ≥ 1``) holds on some seeds only, asserted (gating)
    as a chapter would; and C2, which always holds. Seed `crash_on` crashes the notebook."""
    crash = f"assert seed != {crash_on}, 'crashed on seed {crash_on}'\n" if crash_on is not None else ""
    return notebook_chapter(tmp_path / "seeds.ipynb",
                            "import os\n"
                            "from lab.claims import Ledger\n"
                            "seed = int(os.environ['LAB_SEED'])\n" + crash +
                            "ledger = Ledger('mode-interpolation', os.environ['LAB_SCALE'], seed)\n"
                            "ledger.check('C1', 'seed mod 3', seed % 3, at_least=1, gating=True,"
                            " paper='every seed')\n"
                            "ledger.check('C2', 'always', 1.0, at_least=0.5)\n"
                            "ledger.summary()")


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("LAB_SEED", "LAB_RUN_ID", "LAB_EXPLORERS", "LAB_SWEEP", "LAB_RESULTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LAB_SCALE", "tiny")


def test_sweep_writes_a_record_of_every_claim_and_seed(tmp_path, records_dir, clean_env, monkeypatch, capsys):
    monkeypatch.setattr(cli, "get", lambda cid: seed_chapter(tmp_path))
    assert cli.main(["sweep", "mode-interpolation", "--seeds", "0-3", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "over seeds 0-3, 2 at a time" in out
    for seed in range(4):
        assert f"seed {seed}: " in out
    assert "1 of 2 claims held (missed: C1)" in out and "2 of 2 claims held" in out
    assert "do not cover 0-7" in out and "record written to" in out

    record = json.loads((records_dir / "mode-interpolation.tiny.json").read_text())
    assert record["format"] == records.FORMAT and record["seeds"] == [0, 1, 2, 3]
    assert (record["chapter"], record["scale"]) == ("mode-interpolation", "tiny")
    c1, c2 = record["claims"]
    assert (c1["id"], c1["text"], c1["threshold"], c1["paper"], c1["at_least"]) == \
        ("C1", "seed mod 3", "≥ 1", "every seed", 1.0)
    assert [(s["seed"], s["measured"], s["held"]) for s in c1["per_seed"]] == \
        [(0, 0.0, False), (1, 1.0, True), (2, 2.0, True), (3, 0.0, False)]
    assert all(s["held"] for s in c2["per_seed"]) and records.held_on(c2) == (4, 4)
    assert not records.gates(c2)                                  # seeds 4-7 were not swept
    p = record["provenance"]
    for key in ("commit", "dirty", "lab_source_hash", "date", "hardware", "torch", "lab", "jobs", "runs"):
        assert key in p
    assert p["lab_source_hash"] == __import__("lab").paths.source_hash(record["chapter"]) and p["jobs"] == 2
    assert p["commit"] is None or (len(p["commit"]) >= 7 and isinstance(p["dirty"], bool))
    assert p["hardware"] and p["torch"] and p["date"].endswith("Z")
    assert [r["seed"] for r in p["runs"]] == [0, 1, 2, 3] and all(r["wall_s"] > 0 for r in p["runs"])
    assert not list(records_dir.glob(".*.tmp"))


def test_a_crashing_seed_fails_the_sweep_and_keeps_the_old_record(tmp_path, records_dir, clean_env,
                                                                   monkeypatch, capsys):
    old = make_record(records_dir, [True] * 8)
    before = old.read_text()
    monkeypatch.setattr(cli, "get", lambda cid: seed_chapter(tmp_path, crash_on=1))
    assert cli.main(["sweep", "mode-interpolation", "--seeds", "0-1", "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert "FAILED: seed 1 failed" in err and "crashed on seed 1" in err and "no record written" in err
    assert old.read_text() == before and not list(records_dir.glob(".*.tmp"))


def test_an_interrupted_sweep_writes_no_record(tmp_path, records_dir, clean_env):
    def interrupt(line):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        sweep.sweep(seed_chapter(tmp_path), [0, 1, 2], "tiny", 1, say=interrupt)
    assert not (records_dir / "mode-interpolation.tiny.json").exists()
    assert not list(records_dir.glob(".*"))


def test_build_record_keeps_claims_in_order_and_non_finite_values_as_none():
    def claim(cid, measured):
        return {"id": cid, "text": cid, "threshold": "≤ 1", "at_least": None, "at_most": 1.0, "paper": "",
                "measured": measured, "display": str(measured), "reproduced": measured <= 1}
    runs = {1: {"claims": [claim("B", 0.5), claim("A", float("nan"))]}, 0: {"claims": [claim("B", 2.0)]}}
    record = sweep.build_record("ect", "gpu", runs, {})
    assert [c["id"] for c in record["claims"]] == ["B", "A"] and record["seeds"] == [0, 1]
    assert [s["seed"] for s in record["claims"][0]["per_seed"]] == [0, 1]
    assert record["claims"][1]["per_seed"] == [{"seed": 1, "display": "nan", "held": False, "measured": None}]


def test_git_state_without_git_is_none(monkeypatch):
    import subprocess

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(subprocess, "run", no_git)
    assert sweep.git_state() == (None, None)


def test_hardware_names_the_cpu_at_tiny_scale():
    assert isinstance(sweep.hardware("tiny"), str) and sweep.hardware("tiny")


def test_a_record_is_written_one_line_per_seed_and_reads_back_the_same(records_dir):
    path = make_record(records_dir, [True, False, True])
    record = json.loads(path.read_text())
    record["claims"][0]["text"] = 'a "quoted" claim, row0 [with] {brackets}'
    text = sweep.dumps(record)
    assert json.loads(text) == record
    lines = [line.strip() for line in text.splitlines()]
    assert '{"seed": 1, "display": "0.1", "held": false, "measured": 0.1},' in lines
    assert '"seeds": [0, 1, 2],' in lines
