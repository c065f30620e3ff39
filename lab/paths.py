"""Where results, run checkpoints and the book's execution cache live."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def repo_root() -> Path | None:
    """The book's checkout when `lab` is used from one (it holds ``_toc.yml``), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "_toc.yml").exists() else None


def build_dir() -> Path:
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "_build"


def results_dir() -> Path:
    """``$LAB_RESULTS_DIR``, default ``_build/results`` of the checkout (or of the working folder)."""
    env = os.environ.get("LAB_RESULTS_DIR", "").strip()
    return Path(env).expanduser().resolve() if env else build_dir() / "results"


def runs_dir() -> Path:
    """Training checkpoints: ``$LAB_RUNS_DIR``, default ``_build/runs``."""
    env = os.environ.get("LAB_RUNS_DIR", "").strip()
    return Path(env).expanduser().resolve() if env else build_dir() / "runs"


def saved_dir(chapter: str) -> Path:
    """Results of larger-scale runs that ship with the book: ``book/saved/<chapter>``."""
    root = repo_root()
    base = root / "book" if root is not None else Path.cwd()
    return base / "saved" / chapter


def records_dir() -> Path:
    """Seed-sweep records that ship with the book: ``$LAB_RECORDS_DIR``, default ``book/records``
    of the checkout (or of the working folder). ``python -m lab sweep`` writes them; every other
    reader (a chapter's claims, the ledger, the book build) only reads them."""
    env = os.environ.get("LAB_RECORDS_DIR", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "book" / "records"


def record_path(chapter: str, scale: str, folder: Path | None = None) -> Path:
    """``<records>/<chapter>.<scale>.json``: one record per chapter and scale."""
    return (Path(folder) if folder is not None else records_dir()) / f"{chapter}.{scale}.json"


def jupyter_cache_dir() -> Path:
    """The execution cache that jupyter-book reads (``execute.cache`` in ``_config.yml``)."""
    return build_dir() / ".jupyter_cache"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


LAB = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=16)
def _hash_of(stamps: tuple) -> str:
    h = hashlib.sha256()
    for rel, _, _ in stamps:
        h.update(rel.encode() + b"\0" + (LAB / rel).read_bytes())
    return h.hexdigest()[:16]


def source_hash(chapter: str | None = None) -> str:
    """A short hash of the ``.py`` files of ``lab`` (paths and contents): it names the code that
    produced a checkpoint, a cached notebook or a record, and changes with any edit. With a
    `chapter` id, the other chapters' folders under ``lab/papers`` are left out: a chapter never
    imports them (tests/test_layout.py), so their edits cannot change its numbers."""
    own = chapter.replace("-", "_") if chapter is not None else None
    files = sorted(f for f in LAB.rglob("*.py")
                   if own is None or f.parent.parent.name != "papers" or f.parent.name == own)
    stamps = tuple((str(f.relative_to(LAB)), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _hash_of(stamps)
