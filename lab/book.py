"""Executing chapter notebooks, once, and handing the result to the book build.

jupyter-book (``execute_notebooks: cache``) looks executed notebooks up in a jupyter-cache
folder by a hash of their code cells. Whatever executes a chapter — ``python -m lab run``, or
the notebook tests under nbval — stores the executed notebook there, so the book build that
follows reuses it instead of running the chapter again. The cache is keyed on cell sources
only; :func:`open_cache` therefore empties it whenever the source of ``lab`` has changed.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from . import paths

KERNEL = "python3"


def open_cache(folder: Path | None = None):
    """The book's jupyter-cache, emptied first if it was filled by another version of ``lab``."""
    from jupyter_cache import get_cache
    folder = Path(folder) if folder is not None else paths.jupyter_cache_dir()
    stamp = folder.parent / ".jupyter_cache.lab-hash"
    current = paths.source_hash()
    if folder.exists() and (not stamp.exists() or stamp.read_text() != current):
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(current)
    return get_cache(str(folder))


def store_executed(nb, source: Path, folder: Path | None = None) -> None:
    """Put an executed notebook into the book's cache under its source path."""
    try:
        from jupyter_cache.base import CacheBundleIn
    except ImportError:  # the book extra is not installed: nothing will read the cache
        return
    cache = open_cache(folder)
    cache.cache_notebook_bundle(CacheBundleIn(nb, str(Path(source).resolve())),
                                check_validity=False, overwrite=True)


def execute(source: Path, *, timeout: int = 1200, progress: bool = True, cache: bool = True):
    """Execute a notebook top to bottom in a fresh kernel (cwd = its folder); print one line per
    section as it goes. Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell."""
    import nbformat
    from nbclient import NotebookClient

    source = Path(source).resolve()
    nb = nbformat.read(source, as_version=4)
    started = time.time()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    headings = {}
    last_heading = ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    last_heading = line.lstrip("# ").strip()
                    break
        else:
            headings[id(cell)] = last_heading
    done = {"n": 0, "heading": None}

    def on_cell_executed(cell, cell_index, execute_reply):
        if cell.cell_type != "code":
            return
        done["n"] += 1
        heading = headings.get(id(cell), "")
        if progress and heading != done["heading"]:
            done["heading"] = heading
            print(f"  [{done['n']:>3}/{len(cells)}] {time.time() - started:6.1f}s  {heading}", flush=True)

    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, store_widget_state=True,
                            resources={"metadata": {"path": str(source.parent)}},
                            on_cell_executed=on_cell_executed)
    client.execute()
    if cache:
        store_executed(nb, source)
    return nb


if __name__ == "__main__":   # `python -m lab.book`: empty a cache that another lab filled
    open_cache()
