"""Figure helpers: one look for every chapter, and a stamp saying which scale made a figure."""
from __future__ import annotations

import matplotlib

PALETTE = {"in": "#4C72B0", "halluc": "#DD4444", "oracle": "#55A868", "learned": "#4C72B0",
           "grey": "#888888", "accent": "#C44E52"}


def figure(ncols: int = 1, nrows: int = 1, width: float = 9.0, height: float = 3.0, **kw):
    """A new figure (not pyplot-managed, so it never leaks into later cells) and its axes."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kw)
    return fig, axes


def stamp(fig, scale: str, seed: int | None = None, note: str = "") -> None:
    """Write the scale (and seed) that produced `fig` in its bottom-right corner, in a strip of
    its own below the axes (the layout keeps the axes and their labels above it)."""
    text = f"scale: {scale}" + (f" · seed {seed}" if seed is not None else "") + (f" · {note}" if note else "")
    strip = 0.2 / fig.get_figheight()                   # inches for one line of 9-point text
    engine = fig.get_layout_engine()
    if engine is not None and hasattr(engine, "set") and "rect" in engine.get():
        engine.set(rect=(0, strip, 1, 1 - strip))
    fig.text(0.995, 0.003, text, ha="right", va="bottom", fontsize=9, color="#888888")


MIN_FONT_KEY = "Lab-Min-Font-Px"
PAGE_PX = 676        # the width of the book's text column in a 1280-pixel-wide browser window
MIN_TEXT_PX = 9.0    # the smallest text, in shown pixels, that a reader takes in without zooming


def smallest_font_px(fig, dpi: float) -> float:
    """The height in pixels, at `dpi`, of the smallest visible text in `fig` (0 if it has none)."""
    from matplotlib.text import Text
    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and t.figure is not None]
    return min(sizes) * dpi / 72 if sizes else 0.0


def legible(fig, dpi: float) -> float:
    """Raise every text of `fig` that the page would show under MIN_TEXT_PX pixels, at `dpi` and
    the page's width, to the size that shows at MIN_TEXT_PX; return that size in points. A figure
    wider than the page is shown shrunk, so its smallest text must be larger."""
    from matplotlib.text import Text
    shown = min(1.0, PAGE_PX / (fig.get_figwidth() * dpi))
    floor = MIN_TEXT_PX * 72 / (dpi * shown)
    for ax in fig.axes:                       # tick labels are made anew at draw time
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            ticks = axis.get_major_ticks()
            if ticks and ticks[0].label1.get_fontsize() < floor:
                ax.tick_params(axis=name, which="both", labelsize=floor)
    for text in fig.findobj(Text):
        if text.get_fontsize() < floor:
            text.set_fontsize(floor)
    return floor


def png_bytes(fig, dpi: int = 80) -> bytes:
    """`fig` as PNG bytes, its text made legible at the page's width (:func:`legible`). The PNG
    carries the pixel height of its smallest text as drawn, so the rendered-page checks can tell
    how tall the labels are at the width the page shows it."""
    import io
    buf = io.BytesIO()
    legible(fig, dpi)
    fig.savefig(buf, format="png", dpi=dpi)
    return _with_text_chunk(buf.getvalue(), MIN_FONT_KEY, f"{smallest_font_px(fig, dpi):.3f}")


def _with_text_chunk(png: bytes, key: str, value: str) -> bytes:
    """`png` with a tEXt chunk (key, value) after its header chunk."""
    import struct
    import zlib
    header_end = 8 + 4 + 4 + 13 + 4                      # signature, IHDR length, type, data, CRC
    body = b"tEXt" + key.encode("latin-1") + b"\0" + value.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    return png[:header_end] + chunk + png[header_end:]


def min_font_px_of(png: bytes) -> float | None:
    """The smallest text height that :func:`png_bytes` wrote into `png` (None if absent)."""
    import io

    from PIL import Image
    with Image.open(io.BytesIO(png)) as image:
        value = image.info.get(MIN_FONT_KEY)
    return float(value) if value is not None else None


def show_figures_inline() -> None:
    """Let a bare Figure at the end of a notebook cell display as a PNG (without pyplot's state)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    shell = get_ipython()
    if shell is not None:
        from matplotlib.figure import Figure
        shell.display_formatter.formatters["image/png"].for_type(Figure, lambda fig: png_bytes(fig, dpi=100))


show_figures_inline()
matplotlib.rcParams.update({"axes.spines.top": False, "axes.spines.right": False,
                            "axes.titlesize": 10, "axes.labelsize": 9, "font.size": 9})


class Source:
    """The source of a `lab` function, shown as a highlighted code block in notebooks and the book."""

    def __init__(self, obj):
        import inspect
        if not callable(obj):
            raise TypeError(f"obj must be a function or class; got {type(obj).__name__}")
        self.code = inspect.getsource(obj)

    def _repr_markdown_(self) -> str:
        return f"```python\n{self.code}```"

    def __repr__(self) -> str:
        return self.code
