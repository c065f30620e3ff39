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
    """A short hash of ``lab``'s ``.py`` files (paths and contents): it names the code that
    produced a checkpoint, a cached notebook or a record, and changes with any edit. With a
    `chapter` id it covers only the code that chapter can run: its own folder under
    ``lab/papers``, its notebook's ``lab`` imports, and every ``lab`` module these import, directly
    or inside a function, followed to the end (:func:`chapter_sources`). A new shared module, or
    another chapter's code, leaves the hash of a chapter that never imports it unchanged."""
    files = sorted(LAB.rglob("*.py")) if chapter is None else chapter_sources(chapter)
    stamps = tuple((str(f.relative_to(LAB)), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _hash_of(stamps)


def chapter_sources(chapter: str) -> list[Path]:
    """The ``lab`` files a chapter's run can execute: the transitive ``lab`` imports (static,
    read from the source, including imports inside functions) of the chapter's folder
    ``lab/papers/<package>`` and of the code cells of ``book/<chapter>.ipynb`` when the checkout
    has it. Importing a module also runs its packages' ``__init__.py``; those count too."""
    if not isinstance(chapter, str) or not chapter.strip():
        raise ValueError(f"chapter must be a chapter id such as 'ect'; got {chapter!r}")
    own = LAB / "papers" / chapter.replace("-", "_")
    if not own.is_dir():
        raise ValueError(f"chapter {chapter!r} has no folder {own.relative_to(LAB.parent)}")
    todo = [LAB / "__init__.py", LAB / "papers" / "__init__.py", *sorted(own.rglob("*.py"))]
    root = repo_root()
    notebook = root / "book" / f"{chapter}.ipynb" if root is not None else None
    if notebook is not None and notebook.exists():
        todo += _module_files(_notebook_imports(notebook))
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += _module_files(_imports_of(f.read_text(), _package_of(f)))
    return sorted(seen)


def _package_of(f: Path) -> list[str]:
    """The dotted package a file's relative imports start from, as parts: ``lab/nn/gpt.py`` and
    ``lab/nn/__init__.py`` both → ``['lab', 'nn']``."""
    return ["lab", *f.parent.relative_to(LAB).parts]


def _imports_of(source: str, package: list[str]) -> set[str]:
    """Dotted ``lab`` names a source imports: ``import lab.x``, ``from lab.x import y`` and
    relative forms give ``lab.x`` and ``lab.x.y`` (``y`` may be a module or an attribute)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return {n for n in names if n == "lab" or n.startswith("lab.")}


def _notebook_imports(notebook: Path) -> set[str]:
    import json

    names: set[str] = set()
    for cell in json.loads(notebook.read_text()).get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", ""))
        lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        try:
            names |= _imports_of("\n".join(lines), ["lab"])
        except SyntaxError:
            continue
    return names


def _module_files(names) -> list[Path]:
    """The files that importing each dotted name runs: the module (or package ``__init__``) and
    the ``__init__.py`` of every package above it; names that are attributes are skipped."""
    files: list[Path] = []
    for name in names:
        parts = name.split(".")[1:]
        for depth in range(len(parts) + 1):
            here = LAB.joinpath(*parts[:depth])
            for f in (here / "__init__.py", here.with_suffix(".py") if depth else None):
                if f is not None and f.is_file():
                    files.append(f)
    return files
