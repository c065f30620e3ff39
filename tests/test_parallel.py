"""lab.parallel: jobs in worker processes give what they give in this process, in order."""
from __future__ import annotations

import operator

import pytest

from lab.parallel import run_jobs


def test_workers_return_the_serial_results_in_order():
    jobs = [(i, i + 1) for i in range(5)]
    serial = run_jobs(operator.mul, jobs, workers=1)
    assert serial == [0, 2, 6, 12, 20]
    assert run_jobs(operator.mul, jobs, workers=2) == serial
    assert run_jobs(operator.mul, [], workers=2) == []


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="workers"):
        run_jobs(operator.mul, [(1, 2)], workers=0)
    with pytest.raises(TypeError, match="fn"):
        run_jobs(None, [(1, 2)], workers=1)
