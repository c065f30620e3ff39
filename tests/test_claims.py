import json

import pytest

from lab.claims import ClaimFailed, ClaimsTable, Ledger, load_results


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
                "wall_s", "versions"):
        assert key in c
    assert c["versions"]["lab"] and c["versions"]["torch"]
    assert "C1" in str(table) and "<table" in table._repr_html_()
    assert load_results(tmp_path)[0]["chapter"] == "mode-interpolation"


def test_gating_claim_that_misses_raises_and_reported_does_not(tmp_path):
    ledger = Ledger("mode-interpolation", "tiny", 2, results_dir=tmp_path)
    with pytest.raises(ClaimFailed, match="C3 did not reproduce.*seed 2"):
        ledger.check("C3", "auroc", 0.85, at_least=0.9)
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
