import pytest

from lab.exercises import check


def test_check_reports_each_case(capsys):
    check("a", None, 1.0)
    check("b", 1.0005, 1.0)
    check("c", 2.0, 1.0, hint="look again")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("◻ a: not answered") and out[1].strip().startswith("Replace None")
    assert out[2].startswith("✔ b")
    assert out[3].startswith("✘ c") and "Hint: look again" in out[3]
    with pytest.raises(TypeError, match="answer for d must be a number"):
        check("d", "ten", 10.0)
