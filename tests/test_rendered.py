"""Checks of the built HTML book in headless Chromium (run after `jupyter-book build`)."""
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from lab.chapters import CHAPTERS
from pagecheck import MIN_LABEL_PX, PROGRESS, RAW_TEX, WARNING, label_heights, visible_text

pytestmark = pytest.mark.rendered
HTML = Path(os.environ.get("LAB_HTML_DIR") or Path(__file__).resolve().parent.parent / "_build" / "html")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(autouse=True, scope="module")
def built_book():
    """Every check here needs the built chapter pages: without them each one fails, none passes
    on an empty folder."""
    missing = [c.id for c in CHAPTERS if c.ready and not (HTML / "book" / f"{c.id}.html").exists()]
    if missing:
        pytest.fail(f"no built page for {', '.join(missing)} in {HTML}: build the book first (make html)")


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI for the rendered-page checks")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return exe


def browse(page: Path, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def chapter_dom():
    page = HTML / "book" / "mode-interpolation.html"
    if not page.exists():
        pytest.fail(f"{page} is missing: build the book first (make html)")
    return browse(page, "--virtual-time-budget=5000", "--dump-dom").stdout


def test_chapter_page_shows_figures_claims_and_explorers(chapter_dom):
    assert "Where diffusion models" in chapter_dom
    figures = re.findall(r"<img[^>]+src=\"[^\"]*_images/[^\"]+\.png\"", chapter_dom)
    assert len(figures) >= 3, "the chapter's figures are missing"
    for name in re.findall(r"_images/([^\"]+\.png)", chapter_dom):
        assert (HTML / "_images" / name).stat().st_size > 5_000, name
    explorers = re.findall(r"<div class=\"lab-explorer\" id=\"(lx\w+)\"", chapter_dom)
    assert len(explorers) == 3
    assert chapter_dom.count('type="range"') >= 5        # 1 + 2 + 2 sliders
    assert "lab-claims" in chapter_dom and "C5r" in chapter_dom
    assert "Traceback" not in chapter_dom
    assert "Awaiting a gpu-scale run" in chapter_dom or "recorded" in chapter_dom
    assert "colab.research.google.com/github/" in chapter_dom          # the launch button


READY = [c.id for c in CHAPTERS if c.ready]


@pytest.mark.parametrize("chapter", READY)
def test_every_chapter_page_renders_its_results(chapter):
    page = HTML / "book" / f"{chapter}.html"
    assert page.exists(), f"{page} is missing"
    dom = browse(page, "--virtual-time-budget=5000", "--dump-dom").stdout
    figures = re.findall(r"<img[^>]+src=\"[^\"]*_images/[^\"]+\.png\"", dom)
    explorers = re.findall(r"<div class=\"lab-explorer\"", dom)
    assert figures and explorers, "figures and explorers must show in the page"
    assert "lab-claims" in dom, "the claims table is missing"
    assert "Traceback" not in dom, "a cell failed while the page was executed"
    assert "colab.research.google.com/github/" in dom


@pytest.mark.parametrize("chapter", READY)
def test_no_raw_tex_progress_fragments_or_tracebacks(chapter):
    dom = browse(HTML / "book" / f"{chapter}.html", "--virtual-time-budget=8000", "--dump-dom").stdout
    assert "mjx-container" in dom, "MathJax did not render"
    text = visible_text(dom)
    code = " ".join(re.findall(r"<pre\b.*?</pre>", dom, flags=re.S))     # listings may hold TeX
    raw = [m.group(0) for m in RAW_TEX.finditer(text) if m.group(0) not in visible_text(code)]
    assert not raw, f"raw TeX in the page: {raw[:5]}"
    outputs = visible_text(" ".join(re.findall(r'<div class="cell_output.*?</div>\s*</div>', dom,
                                               flags=re.S)))
    assert not PROGRESS.search(outputs), "a text progress bar leaked into an output"
    warned = WARNING.search(outputs)
    assert not warned, f"a warning leaked into an output: {outputs[warned.start():][:120]}"
    assert "Traceback (most recent call last)" not in text


# After the page has loaded, write each image's natural and shown width into the DOM, so that
# --dump-dom (the only output of a headless Chromium run without a driver) carries them.
MEASURE = """<script>window.addEventListener('load', () => setTimeout(() => {
  const widths = [...document.querySelectorAll('img')].map(i => [i.naturalWidth, i.clientWidth]);
  document.body.setAttribute('data-lab-img-widths', JSON.stringify(widths));
  const wide = [...document.querySelectorAll('div.cell pre')].filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => p.textContent.split('\\n').reduce((a, b) => b.length > a.length ? b : a));
  document.body.setAttribute('data-lab-wide-code', JSON.stringify(wide)); }, 300));</script>"""


@pytest.mark.parametrize("chapter", READY)
def test_figures_and_code_fit_the_page(chapter):
    """In a 1280-pixel-wide window, every figure's smallest text is at least MIN_LABEL_PX tall
    (the PNGs carry their smallest text height; lab.viz.style), and no code cell or printed
    output is wider than the text column."""
    page = HTML / "book" / f"{chapter}.html"
    probe = page.with_name(f"_labels_{page.name}")
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    try:
        dom = browse(probe, "--window-size=1280,900", "--virtual-time-budget=8000", "--dump-dom").stdout
    finally:
        probe.unlink()
    heights = label_heights(dom, HTML / "book")
    wide = json.loads(html.unescape(re.search(r'data-lab-wide-code="([^"]*)"', dom).group(1)))
    assert not wide, f"code or output wider than the page (scrolls sideways): {wide[:3]}"
    assert len(heights) >= 3, f"found only {len(heights)} figures with a text-size record"
    unrecorded = [where for where, px in heights if px is None]
    assert not unrecorded, f"figures not drawn through lab.viz.style.png_bytes: {unrecorded}"
    small = [(where, round(px, 1)) for where, px in heights if px < MIN_LABEL_PX]
    assert not small, f"labels under {MIN_LABEL_PX} px at page width: {small}"


def test_no_page_loads_scripts_from_a_cdn():
    pages = list(HTML.rglob("*.html"))
    assert len(pages) > len(READY), "the built book has fewer pages than chapters"
    for page in pages:
        text = page.read_text(errors="ignore")
        for host in ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com"):
            assert not re.search(rf"<script[^>]+src=\"https?://{re.escape(host)}", text), (page, host)


def test_ledger_page_lists_the_chapter_claims():
    page = HTML / "book" / "ledger.html"
    dom = browse(page, "--dump-dom").stdout
    assert "lab-ledger" in dom and "C1" in dom
    from lab.chapters import CHAPTERS
    for chapter in (c for c in CHAPTERS if c.ready):          # each ready chapter has its section
        assert f"{chapter.id}.html" in dom, chapter.id
    assert ("Chapters to come" in dom) == any(not c.ready for c in CHAPTERS)


def test_chapter_page_screenshot_is_not_blank(tmp_path):
    shot = tmp_path / "chapter.png"
    browse(HTML / "book" / "mode-interpolation.html", f"--screenshot={shot}", "--window-size=1200,2400",
           "--virtual-time-budget=5000")
    assert shot.exists() and shot.stat().st_size > 20_000
    from matplotlib.image import imread
    pixels = imread(shot)
    assert pixels.std() > 0.05, "the screenshot is a blank page"
