"""Hand notebooks executed by nbval to the book build, so each chapter executes once per test run.

nbval runs a notebook cell by cell in one kernel. This plugin keeps each cell's outputs and,
when every cell of a notebook has passed, asks the kernel for its widget state and stores the
executed notebook in the book's jupyter-cache (see :mod:`lab.book`). The book build that
follows finds it there and does not execute the chapter again.
"""
from __future__ import annotations

import copy
import json

import pytest


def pytest_configure(config):
    # the tests' tensors are small: one thread is faster on a shared small CPU (measured)
    import torch
    torch.set_num_threads(1)

WIDGET_STATE = ("import json as _j, ipywidgets as _w\n"
                "print(_j.dumps(_w.Widget.get_manager_state(drop_defaults=True)))")


def _is_nbval_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if not _is_nbval_cell(item) or call.when != "call":
        return
    notebook = item.parent
    record = notebook.__dict__.setdefault("_lab_executed", {"cells": {}, "failed": False})
    if outcome.get_result().failed:
        record["failed"] = True
    elif item.test_outputs is not None:
        record["cells"][item.cell_num] = copy.deepcopy(item.test_outputs)


def _widget_state(kernel) -> dict | None:
    msg_id = kernel.execute_cell_input(WIDGET_STATE, allow_stdin=False)
    text = []
    while True:
        msg = kernel.get_message(stream="iopub", timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            return None
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    return json.loads("".join(text)) if text else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    notebook = item.parent
    last_cell = _is_nbval_cell(item) and (nextitem is None or nextitem.parent is not notebook)
    if last_cell:
        _store(notebook)
    yield


def _store(notebook) -> None:
    record = notebook.__dict__.get("_lab_executed")
    code_cells = [c for c in notebook.nb.cells if c.cell_type == "code"]
    if not record or record["failed"] or len(record["cells"]) != len(code_cells):
        return
    from lab.book import store_executed
    nb = copy.deepcopy(notebook.nb)
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = record["cells"][count]
        count += 1
        cell.execution_count = count
        for out in outputs:
            if out.get("output_type") == "execute_result":
                out["execution_count"] = count
                out.setdefault("metadata", {})
        cell.outputs = outputs
    if notebook.kernel is not None and notebook.kernel.is_alive():
        state = _widget_state(notebook.kernel)
        if state and state.get("state"):
            nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": state}
    store_executed(nb, notebook.path)
