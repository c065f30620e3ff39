"""The explorers, live: JupyterLab with this kernel, driven by headless Chromium.

For each ready chapter: open a copy of its notebook in a running JupyterLab, run all cells at
tiny scale with live explorers, move one slider of the chapter's first explorer (its main one)
and check that the explorer's figure changes. Skipped, with the reason, where Chromium,
Playwright or JupyterLab is missing. Runs after the book build (``-m live``), so the chapters'
training runs are already checkpointed and each chapter executes warm.
"""
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lab.chapters import CHAPTERS

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parent.parent
READY = [c for c in CHAPTERS if c.ready]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHAPTER_TIMEOUT_S = 900
SLIDER = ".jp-OutputArea .widget-slider"
HANDLE = ".noUi-handle, .ui-slider-handle"

ALL_RAN = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
}"""
FAILED = """() => document.querySelector(
  '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"], .jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]'
) !== null"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium): live widgets are not checked")
    pytest.importorskip("playwright", reason="playwright is not installed: live widgets are not checked")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed: live widgets are not checked")
    work = tmp_path_factory.mktemp("live")
    notebooks = work / "notebooks"
    notebooks.mkdir()
    for chapter in READY:                     # copies: JupyterLab saves what it runs
        shutil.copy(chapter.notebook, notebooks / chapter.notebook.name)
    settings = work / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "LAB_SCALE": "tiny", "LAB_EXPLORERS": "live",
           "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    log = open(work / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.token={token}", f"--ServerApp.root_dir={notebooks}", "--allow-root"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=notebooks)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(work / 'jupyterlab.log').read_text()[-1500:]}")
            time.sleep(0.5)
    yield url, token
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture(scope="module")
def browser(jupyterlab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chrome
        chrome.close()


def _run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def _image(box) -> str:
    img = box.locator("img").first
    img.wait_for(timeout=60_000)
    return img.get_attribute("src") or ""


@pytest.mark.parametrize("chapter", READY, ids=[c.id for c in READY])
def test_the_main_explorer_updates_live(jupyterlab, browser, chapter):
    url, token = jupyterlab
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"{url}/lab/tree/{chapter.notebook.name}?token={token}")
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-Toolbar-kernelStatus", timeout=60_000)
        time.sleep(2)                                              # the kernel is attached
        _run_all(page)
        start, deadline = time.monotonic(), time.monotonic() + CHAPTER_TIMEOUT_S
        while not page.evaluate(ALL_RAN):
            assert not page.evaluate(FAILED), f"{chapter.id}: a cell raised while running live"
            assert time.monotonic() < deadline, f"{chapter.id}: not finished in {CHAPTER_TIMEOUT_S} s"
            time.sleep(2)
        assert not page.evaluate(FAILED), f"{chapter.id}: a cell raised while running live"
        ran_s = time.monotonic() - start
        slider = page.locator(SLIDER).first
        assert slider.count(), f"{chapter.id}: no live explorer (ipywidgets slider) in the outputs"
        box = slider.locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][1]")
        before = _image(box)
        changed = False
        for key in ("ArrowRight", "ArrowLeft", "ArrowLeft"):
            box.locator(HANDLE).first.focus()
            page.keyboard.press(key)
            for _ in range(60):
                time.sleep(1)
                if box.locator("img").count() and _image(box) != before:
                    changed = True
                    break
            if changed:
                break
        assert changed, f"{chapter.id}: moving the first explorer's slider did not change its figure"
        print(f"{chapter.id}: ran live in {ran_s:.0f} s; the explorer redrew")
    finally:
        page.close()
