import pytest

from conftest import make_record
from lab.sphinx_ext import ledger_html


def result(chapter="mode-interpolation", **extra):
    return dict({"chapter": chapter, "scale": "tiny", "seed": 1, "finished": "2026-01-01 00:00:00",
                 "wall_s": 90.0, "complete": True, "run_id": "r", "claims": [
                     {"id": "C1", "text": "a <claim>", "display": "0.3%", "threshold": "≥ 0.5",
                      "reproduced": True, "gating": True, "paper": ""},
                     {"id": "C4p", "text": "paper level", "display": "0.9", "threshold": "≥ 0.95",
                      "reproduced": False, "gating": False, "paper": "> 0.95"}]}, **extra)


@pytest.fixture
def records(tmp_path):
    return tmp_path / "records"


def test_ledger_html_lists_claims_and_chapters_to_come(records):
    page = ledger_html([result()], records)
    assert "<b>1 of 2</b>" in page and "a &lt;claim&gt;" in page
    assert "⚠ no" in page and "reported" in page and "seed 1" in page
    from lab.chapters import CHAPTERS
    assert "Consistency models made easy" in page                  # a ready chapter not run here
    assert ("Chapters to come:" in page) == any(not c.ready for c in CHAPTERS)
    assert "not run in this build" in ledger_html([], records)
    assert "no sweep record at this scale" in page and "no sweep record yet" in page


def test_ledger_html_shows_seeds_from_the_tiny_record_and_the_worst_gpu_seed(records):
    make_record(records, [True] * 5 + [False] * 3)
    make_record(records, [True, False, True], scale="gpu")
    page = ledger_html([result()], records)
    assert "held on 5 of 8 seeds" in page
    assert "worst 0.1 (seed 1) · held on 2 of 3" in page
    assert "tiny sweep · 8 seeds · 2026-01-05 · commit abc1234 · Test CPU" in page
    assert "gpu sweep · 3 seeds" in page
    pending = page.split("Not yet run at gpu scale:")[1]
    assert "Consistency models made easy" in pending and "hallucinations" not in pending


def test_ledger_html_marks_records_of_older_code(records):
    make_record(records, [True] * 8, source_hash="0" * 16, commit="abc1234")
    assert "measured on older code, commit abc1234" in ledger_html([result()], records)


def test_ledger_html_shows_a_failed_run_as_failed(records):
    failed = result(complete=False, failed="ClaimFailed: C1 did not reproduce")
    page = ledger_html([failed], records)
    assert "The last run failed: ClaimFailed: C1 did not reproduce" in page
    assert "the last run failed in 1 of them" in page


def test_ledger_html_says_when_wall_time_came_from_cached_checkpoints(records):
    assert "90 s (from cached checkpoints)" in ledger_html([result(cached_runs=2)], records)
    assert "cached" not in ledger_html([result(cached_runs=0)], records)


def test_ledger_html_keeps_book_order(records):
    page = ledger_html([result("arimec"), result("ect"), result("mode-interpolation")], records)
    titles = ["hallucinations come from", "Consistency models made easy", "low-entropy couplings"]
    assert [page.index(t) for t in titles] == sorted(page.index(t) for t in titles)
