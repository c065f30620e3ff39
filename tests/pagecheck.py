"""What the rendered-page checks look for, kept apart so that a plain unit test can check them."""
import re

RAW_TEX = re.compile(r"\$\$|\\(mathrm|Delta|frac|sum|mathcal|bar|hat|sqrt|left|right)\b")
PROGRESS = re.compile(r"\d+%\|[^|]*\|\s*\d+/\d+")           # tqdm's text bar: " 8%|▊  | 25/300"


def visible_text(dom: str) -> str:
    """The page's text as a reader sees it: rendered math, scripts and styles taken out."""
    for tag in ("mjx-container", "script", "style", "noscript"):
        dom = re.sub(rf"<{tag}\b.*?</{tag}>", " ", dom, flags=re.S)
    return re.sub(r"<[^>]+>", " ", dom)
