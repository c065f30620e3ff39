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


def smallest_font_px(fig, dpi: float) -> float:
    """The height in pixels, at `dpi`, of the smallest visible text in `fig` (0 if it has none)."""
    from matplotlib.text import Text
    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and t.figure is not None]
    return min(sizes) * dpi / 72 if sizes else 0.0


def png_bytes(fig, dpi: int = 80) -> bytes:
    """`fig` as PNG bytes. The PNG carries the pixel height of its smallest text, so the
    rendered-page checks can tell how tall the labels are at the width the page shows it."""
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi,
                metadata={MIN_FONT_KEY: f"{smallest_font_px(fig, dpi):.2f}"})
    return buf.getvalue()


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
