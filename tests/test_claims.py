import json

import pytest

from conftest import make_record
from lab import records
from lab.claims import ClaimFailed, ClaimsTable, Ledger, load_results


@pytest.fixture(autouse=True)
def no_committed_records(records_dir):
    """Every test here starts without sweep records, whatever book/records holds."""


def test_gating_claim_passes_is_recorded_and_published(tmp_path):
    ledger = Ledger("mode-interpolation", "tiny", 0, results_dir=tmp_path)
    ledger.check("C1", "a fraction", 0.004, at_least=0.001, at_most=0.03, fmt="{:.2%}")
    claim = ledger.claims[-1]
    assert claim.reproduced and claim.display == "0.40%" and claim.threshold == "≥ 0.10% and ≤ 3.00%"
    staged = json.loads((tmp_path / ".staging" / "mode-interpolation.json").read_text())
    assert staged["complete"] is False and len(staged["claims"]) == 1
    assert not (tmp_path / "mode-interpolation.json").exists()       # nothing published yet
    table = ledger.summary()
    assert not (tmp_path / ".staging" / "mode-interpolation.json").exists()
    record = json.loads((tmp_path / "mode-interpolation.json").read_text())
    assert record["complete"] and record["scale"] == "tiny" and record["seed"] == 0
    c = record["claims"][0]
    for key in ("chapter", "id", "text", "measured", "threshold", "reproduced", "gating", "scale", "seed",
                "wall_s", "versions", "at_least", "at_most", "robustness"):
        assert key in c
    assert record["cached_runs"] == 0 and "failed" not in record
    assert c["versions"]["lab"] and c["versions"]["torch"]
    assert "C1" in str(table) and "<table" in table._repr_html_()
    assert load_results(tmp_path)[0]["chapter"] == "mode-interpolation"


def test_gating_claim_that_misses_raises_and_reported_does_not(tmp_path):
    ledger = Ledger("mode-interpolation", "tiny", 2, results_dir=tmp_path)
    with pytest.raises(ClaimFailed, match="C3 did not reproduce.*seed 2"):
        ledger.check("C3", "auroc", 0.85, at_least=0.9, gating=True)
    published = json.loads((tmp_path / "mode-interpolation.json").read_text())
    assert published["complete"] is False and "C3 did not reproduce" in published["failed"]
    assert published["claims"][0]["measured"] == 0.85     # what the failed run measured, not a pass
    ledger.check("C4p", "removal", 0.9, at_least=0.95, gating=False)
    reported = ledger.claims[-1]
    assert not reported.reproduced and not reported.gating
    staged = json.loads((tmp_path / ".staging" / "mode-interpolation.json").read_text())
    assert [c["reproduced"] for c in staged["claims"]] == [False, False]


def test_nan_never_reproduces(tmp_path):
    ledger = Ledger("mode-interpolation", "tiny", 0, results_dir=tmp_path)
    ledger.check("X", "nan", float("nan"), at_most=1.0, gating=False)
    assert not ledger.claims[-1].reproduced


def test_a_new_run_discards_stale_staging(tmp_path):
    stale = tmp_path / ".staging" / "mode-interpolation.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{half")
    Ledger("mode-interpolation", "tiny", 0, results_dir=tmp_path)
    assert not stale.exists()


def test_bad_claims_are_rejected(tmp_path):
    ledger = Ledger("mode-interpolation", "tiny", 0, results_dir=tmp_path)
    with pytest.raises(ValueError, match="threshold"):
        ledger.check("A", "no bound", 1.0)
    ledger.check("A", "ok", 1.0, at_least=0.0)
    with pytest.raises(ValueError, match="already checked"):
        ledger.check("A", "twice", 1.0, at_least=0.0)
    with pytest.raises(ValueError, match="chapter must be one of"):
        Ledger("no-such-chapter", "tiny", 0, results_dir=tmp_path)
    with pytest.raises(TypeError, match="seed"):
        Ledger("mode-interpolation", "tiny", 1.5, results_dir=tmp_path)
    with pytest.raises(ValueError, match="no claims"):
        Ledger("ect", "tiny", 0, results_dir=tmp_path).summary()


def test_table_markdown_escapes_pipes():
    table = ClaimsTable([])
    assert table.markdown().startswith("| claim |")


def check_c1(tmp_path, measured=0.9, **kw):
    ledger = Ledger("mode-interpolation", "tiny", 0, results_dir=tmp_path / "results")
    ledger.check("C1", "a claim", measured, at_least=0.5, **kw)
    return ledger.claims[-1]


def test_a_record_holding_on_all_eight_seeds_makes_the_claim_gating(tmp_path, records_dir):
    make_record(records_dir, [True] * 8)
    claim = check_c1(tmp_path)
    assert claim.gating and claim.robustness["held"] == 8 and claim.robustness["seeds"] == 8
    assert "yes (gating · held on 8 of 8 seeds)" in claim.row()
    with pytest.raises(ClaimFailed, match="C1 did not reproduce"):
        Ledger("mode-interpolation", "tiny", 0, results_dir=tmp_path / "r2").check(
            "C1", "a claim", 0.1, at_least=0.5)


def test_a_record_with_one_miss_leaves_the_claim_reported_with_its_k(tmp_path, records_dir):
    make_record(records_dir, [True] * 7 + [False])
    claim = check_c1(tmp_path, measured=0.1)                      # misses, but is not asserted
    assert not claim.gating and not claim.reproduced
    assert claim.robustness["note"] == "held on 7 of 8 seeds"
    assert "NO (reported · held on 7 of 8 seeds)" in claim.row()


def test_the_rule_needs_every_seed_from_0_to_7(tmp_path, records_dir):
    make_record(records_dir, [True] * 7)                         # seeds 0-6 only
    claim = check_c1(tmp_path)
    assert not claim.gating and claim.robustness["note"] == "held on 7 of 7 seeds"


def test_without_a_record_the_claim_is_reported_and_says_so(tmp_path):
    claim = check_c1(tmp_path, measured=0.1)
    assert not claim.gating and claim.robustness == {"gating": False, "note": records.NO_RECORD}
    assert "reported · no sweep record at this scale" in claim.row()[-1]


def test_a_record_of_another_scale_claim_or_threshold_does_not_decide(tmp_path, records_dir):
    make_record(records_dir, [True] * 8, scale="gpu")
    assert not check_c1(tmp_path).gating                          # the tiny run has no tiny record
    make_record(records_dir, [True] * 8, claim="C9")
    assert check_c1(tmp_path).robustness["note"] == "not measured by the sweep record"
    make_record(records_dir, [True] * 8, at_least=0.4)
    claim = check_c1(tmp_path)
    assert not claim.gating and "another threshold (≥ 0.4)" in claim.robustness["note"]


def test_explicit_gating_overrides_the_record(tmp_path, records_dir):
    make_record(records_dir, [True] * 8)
    claim = check_c1(tmp_path, measured=0.1, gating=False)
    assert not claim.gating and claim.robustness["held"] == 8
    with pytest.raises(ClaimFailed):
        Ledger("ect", "tiny", 0, results_dir=tmp_path).check("E1", "x", 0.1, at_least=0.5, gating=True)


def test_during_a_sweep_a_failing_gating_claim_is_recorded_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_SWEEP", "1")
    claim = check_c1(tmp_path, measured=0.1, gating=True)
    assert claim.gating and not claim.reproduced
    assert not (tmp_path / "results" / "mode-interpolation.json").exists()


def test_a_record_from_other_lab_code_is_stale(records_dir):
    make_record(records_dir, [True] * 8, source_hash="0" * 16, commit="abc1234")
    source = records.provenance(records.load("mode-interpolation", "tiny"))
    assert source["stale"]
    assert "measured on older code, commit abc1234" in records.describe(source)
    make_record(records_dir, [True] * 8)
    source = records.provenance(records.load("mode-interpolation", "tiny"))
    assert not source["stale"] and "older code" not in records.describe(source)
    assert records.describe(source) == "tiny sweep · 8 seeds · 2026-01-05 · commit abc1234 · Test CPU"


def test_a_record_of_another_format_is_refused(records_dir):
    (records_dir / "ect.tiny.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="format 99.*sweep the chapter again"):
        records.load("ect", "tiny")


def test_worst_seed_is_the_one_nearest_to_missing():
    entry = {"at_least": 0.5, "at_most": 2.0, "per_seed": [
        {"seed": 0, "measured": 1.0}, {"seed": 1, "measured": 1.9}, {"seed": 2, "measured": 0.7}]}
    assert records.worst_seed(entry)["seed"] == 1
    entry["per_seed"].append({"seed": 3, "measured": None})      # not finite: worst of all
    assert records.worst_seed(entry)["seed"] == 3
