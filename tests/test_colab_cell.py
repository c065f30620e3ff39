"""A chapter's first cell, run where Colab runs it: a Python that already has its own torch and
numpy. The cell must install `lab` and leave both alone.

The environment is a fresh virtual environment with numpy 1.26.4 (ours is newer) and a stand-in
for Colab's CUDA torch: a package that states version 2.5.1+colab (ours is 2.13.0) and has no
GPU. A real second torch would be a multi-GB download; what the test needs is a torch that pip
sees as installed and that a replacement would visibly change. A pip constraint pins torch to
that version, so a cell that tried to replace it fails at once instead of downloading one. The cell's remote address is swapped for
this checkout (the address itself is checked against ``_config.yml`` by test_book_files)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from lab.chapters import CHAPTERS

ROOT = Path(__file__).resolve().parent.parent
READY = [c for c in CHAPTERS if c.ready]
FAKE_TORCH = "2.5.1+colab"
OLD_NUMPY = "1.26.4"


def _fake_torch(site: Path) -> None:
    pkg = site / "torch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(f'''\
        """Stand-in for a preinstalled CUDA torch on a machine without a GPU."""
        __version__ = "{FAKE_TORCH}"


        class cuda:
            @staticmethod
            def is_available():
                return False
        '''))
    info = site / f"torch-{FAKE_TORCH}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {FAKE_TORCH}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory):
    """A virtual environment with Colab's kind of preinstalled torch and an older numpy."""
    env = tmp_path_factory.mktemp("colab") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    _fake_torch(site)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, f"numpy=={OLD_NUMPY}"], check=False, capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"the package registry is out of reach: {done.stderr.strip()[-300:]}")
    return python


def _colab_env() -> dict:
    """This process's environment without what would point the fresh venv at this checkout or
    pick its scale: a Colab session has neither."""
    return {k: v for k, v in os.environ.items() if k not in ("LAB_SCALE", "PYTHONPATH")}


def _tracked_copy(dest: Path) -> Path:
    """The checkout's tracked files (and its uncommitted edits), copied to `dest`."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _versions(python: Path, cwd: Path) -> dict:
    probe = ("import importlib.metadata as m, json, numpy, torch, lab; from lab.scale import current_scale; "
             "print(json.dumps({'torch': m.version('torch'), 'torch_module': torch.__version__, "
             "'numpy': numpy.__version__, 'lab': lab.__file__, 'scale': current_scale()}))")
    env = _colab_env()
    out = subprocess.run([str(python), "-c", probe], cwd=cwd, env=env, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_first_cell_installs_lab_and_keeps_colabs_torch_and_numpy(colab_like, tmp_path):
    chapter = READY[0]
    cell = nbformat.read(chapter.notebook, as_version=4).cells[1]
    assert "hide-cell" in cell.metadata.get("tags", []), "the install cell is the chapter's second cell"
    source = cell.source
    remote = next(line for line in source.splitlines() if line.strip().startswith("URL = "))
    checkout = _tracked_copy(tmp_path / "checkout")        # building writes build/; not here
    local = source.replace(remote, f'    URL = "{checkout.as_uri()}"')
    assert local != source
    env = _colab_env()
    (tmp_path / "constraints.txt").write_text(f"torch=={FAKE_TORCH}\nnumpy=={OLD_NUMPY}\n")
    env["PIP_CONSTRAINT"] = str(tmp_path / "constraints.txt")
    run = subprocess.run([str(colab_like), "-c", local], check=False, cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    got = _versions(colab_like, tmp_path)
    assert got["torch"] == got["torch_module"] == FAKE_TORCH, "the install replaced the preinstalled torch"
    assert got["numpy"] == OLD_NUMPY, "the install replaced the preinstalled numpy"
    assert Path(got["lab"]).is_relative_to(Path(colab_like).parent.parent), got["lab"]
    assert got["scale"] == "tiny", "without a GPU the chapter must default to tiny"
    again = subprocess.run([str(colab_like), "-c", local], check=False, cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and again.stdout == "", "a second run of the cell installs nothing"


@pytest.mark.parametrize("chapter", READY, ids=[c.id for c in READY])
def test_every_chapter_opens_with_the_same_install_cell(chapter):
    first = nbformat.read(READY[0].notebook, as_version=4).cells[1].source
    assert nbformat.read(chapter.notebook, as_version=4).cells[1].source == first
