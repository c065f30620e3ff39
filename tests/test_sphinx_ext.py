from lab.sphinx_ext import ledger_html


def test_ledger_html_lists_claims_and_chapters_to_come():
    record = {"chapter": "mode-interpolation", "scale": "tiny", "seed": 1, "finished": "2026-01-01 00:00:00",
              "wall_s": 90.0, "claims": [
                  {"id": "C1", "text": "a <claim>", "display": "0.3%", "threshold": "≥ 0.1%", "reproduced": True,
                   "gating": True, "paper": ""},
                  {"id": "C4p", "text": "paper level", "display": "0.9", "threshold": "≥ 0.95",
                   "reproduced": False, "gating": False, "paper": "> 0.95"}]}
    page = ledger_html([record])
    assert "<b>1 of 2</b>" in page and "a &lt;claim&gt;" in page
    assert "⚠ no" in page and "reported" in page and "seed 1" in page
    assert "Chapters to come:" in page and "Easy Consistency Tuning" in page
    assert "not run in this build" in ledger_html([])
