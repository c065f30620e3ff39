"""What the rendered-page checks look for, kept apart so that a plain unit test can check them."""
import base64
import html
import json
import re
from pathlib import Path

from lab.viz.style import min_font_px_of

RAW_TEX = re.compile(r"\$\$|\\(mathrm|Delta|frac|sum|mathcal|bar|hat|sqrt|left|right)\b")
PROGRESS = re.compile(r"\d+%\|[^|]*\|\s*\d+/\d+")           # tqdm's text bar: " 8%|▊  | 25/300"
WARNING = re.compile(r"\b\w*Warning: ")                          # "UserWarning: Creating legend ..."


def visible_text(dom: str) -> str:
    """The page's text as a reader sees it: rendered math, scripts and styles taken out."""
    for tag in ("mjx-container", "script", "style", "noscript"):
        dom = re.sub(rf"<{tag}\b.*?</{tag}>", " ", dom, flags=re.S)
    return re.sub(r"<[^>]+>", " ", dom)


MIN_LABEL_PX = 8.5      # about 9 px: the smallest text a reader can take in without zooming


def label_heights(dom: str, page_dir: Path) -> list[tuple[str, float | None]]:
    """(image, smallest text height in shown pixels) for every figure of `dom` that is shown: the
    cells' PNG outputs and the explorers' inline frames. The height is None for a PNG that carries
    no text-size record (it was not drawn through lab.viz.style.png_bytes). `dom` must hold the
    widths that the rendered-page test's script writes into ``data-lab-img-widths`` (natural and
    shown width, in document order)."""
    found = re.search(r'data-lab-img-widths="([^"]*)"', dom)
    if found is None:
        raise ValueError("dom must carry data-lab-img-widths (the page did not finish loading)")
    widths = json.loads(html.unescape(found.group(1)))
    sources = re.findall(r"<img\b[^>]*?\bsrc=\"([^\"]*)\"", dom)
    if len(sources) != len(widths):
        raise ValueError(f"{len(sources)} images in the DOM but {len(widths)} measured")
    out = []
    for index, (src, (natural, shown)) in enumerate(zip(sources, widths)):
        inline = src.startswith("data:image/png")
        if not shown or not natural or not (inline or "_images/" in src and src.endswith(".png")):
            continue
        png = base64.b64decode(src.split(",", 1)[1]) if inline else (page_dir / html.unescape(src)).read_bytes()
        px = min_font_px_of(png)
        out.append((f"image {index} (inline)" if inline else src, px * shown / natural if px else None))
    return out
