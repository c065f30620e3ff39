"""lab._check: argument checks that name the argument, and the wrapper that keeps them out of listings."""
import inspect

import pytest
import torch

from lab import _check


def test_checked_runs_the_check_first_and_keeps_the_signature():
    calls = []

    def args(x, *, scale=1.0):
        calls.append("check")
        _check.real("scale", scale, low=0, low_open=True)

    @_check.checked(args)
    def double(x, *, scale=1.0):
        """Twice x, scaled."""
        calls.append("body")
        return 2 * x * scale

    assert double(3, scale=0.5) == 3.0 and calls == ["check", "body"]
    with pytest.raises(ValueError, match="scale must be in"):
        double(3, scale=0.0)
    assert calls == ["check", "body", "check"]          # the body never ran on bad input
    assert double.__doc__ == "Twice x, scaled." and "scale=1.0" in str(inspect.signature(double))
    assert double.unchecked(3, scale=0.0) == 0.0          # callers that checked already skip it


def test_value_checks_read_cpu_tensors_always_and_device_tensors_only_in_debug(monkeypatch):
    class OnDevice:
        device = torch.device("meta")
    monkeypatch.delenv("LAB_DEBUG", raising=False)
    assert _check.reads_values(torch.zeros(2))
    assert not _check.reads_values(OnDevice())
    monkeypatch.setenv("LAB_DEBUG", "1")
    assert _check.reads_values(OnDevice())
