"""An explorer: one render function, two faces.

Live (Jupyter, Colab): ipywidgets controls re-run the render function on every change.
Static (the rendered book, no kernel): every combination of the parameter grid is rendered
once to a PNG and embedded with plain HTML range sliders and a few lines of JavaScript, so the
page stays interactive offline with no widget manager and no network.

Which face shows is set by ``$LAB_EXPLORERS`` = ``live`` | ``static`` | ``auto`` (default
``auto``: live inside an IPython kernel with ipywidgets, static elsewhere). The book build and
the tests set ``static``. :meth:`Explorer.static` and :meth:`Explorer.live` give either face.
"""
from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import os
from typing import Callable, Mapping, Sequence

from .. import _check
from .style import png_bytes

MODES = ("auto", "live", "static")
MAX_FRAMES = 120


def explorer_mode() -> str:
    mode = os.environ.get("LAB_EXPLORERS", "auto").strip() or "auto"
    mode = _check.choice("LAB_EXPLORERS", mode, MODES)
    if mode != "auto":
        return mode
    try:
        from IPython import get_ipython
        import ipywidgets  # noqa: F401
        shell = get_ipython()
        return "live" if shell is not None and hasattr(shell, "kernel") else "static"
    except ImportError:
        return "static"


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class Explorer:
    """`render(**params)` returns a matplotlib Figure; `params` maps each name to its grid of values.

    `defaults` picks the starting value of each parameter (default: the first of its grid).
    """

    def __init__(self, render: Callable, params: Mapping[str, Sequence], *, title: str,
                 defaults: Mapping | None = None, dpi: int = 72):
        if not callable(render):
            raise TypeError(f"render must be callable; got {type(render).__name__}")
        if not params:
            raise ValueError("params must name at least one parameter and its values")
        self.params = {}
        for name, values in params.items():
            values = list(values)
            if not values:
                raise ValueError(f"params[{name!r}] must list at least one value")
            self.params[name] = values
        self.defaults = {name: values[0] for name, values in self.params.items()}
        for name, value in (defaults or {}).items():
            if name not in self.params:
                raise ValueError(f"defaults names {name!r}, which is not one of {list(self.params)}")
            if value not in self.params[name]:
                raise ValueError(f"defaults[{name!r}] must be one of {self.params[name]}; got {value!r}")
            self.defaults[name] = value
        n_frames = 1
        for values in self.params.values():
            n_frames *= len(values)
        if n_frames > MAX_FRAMES:
            raise ValueError(f"params span {n_frames} combinations; the static twin allows at most {MAX_FRAMES}")
        self.render, self.title, self.dpi = render, title, _check.integer("dpi", dpi, low=20)

    def __call__(self, **params):
        """Render one combination (values must come from the grid)."""
        for name, value in params.items():
            if name not in self.params:
                raise ValueError(f"unknown parameter {name!r}; this explorer has {list(self.params)}")
            if value not in self.params[name]:
                raise ValueError(f"{name} must be one of {self.params[name]}; got {value!r}")
        return self.render(**{**self.defaults, **params})

    # -- the static twin ------------------------------------------------------------------------
    def static(self) -> "StaticExplorer":
        names = list(self.params)
        frames = []
        for combo in itertools.product(*(self.params[n] for n in names)):
            fig = self.render(**dict(zip(names, combo)))
            frames.append("data:image/png;base64," + base64.b64encode(png_bytes(fig, self.dpi)).decode())
        return StaticExplorer(self.title, {n: [_label(v) for v in self.params[n]] for n in names},
                              {n: self.params[n].index(self.defaults[n]) for n in names}, frames)

    # -- the live view --------------------------------------------------------------------------
    def live(self):
        import ipywidgets as w
        from IPython.display import display
        controls = {n: w.SelectionSlider(options=[(_label(v), v) for v in vals], value=self.defaults[n],
                                         description=n, continuous_update=False)
                    for n, vals in self.params.items()}
        out = w.Output()

        def redraw(_=None):
            fig = self.render(**{n: c.value for n, c in controls.items()})
            out.clear_output(wait=True)
            with out:
                display(fig)

        for c in controls.values():
            c.observe(redraw, names="value")
        redraw()
        return w.VBox([w.HTML(f"<b>{html.escape(self.title)}</b>"), w.HBox(list(controls.values())), out])

    def _ipython_display_(self):
        from IPython.display import display
        display(self.live() if explorer_mode() == "live" else self.static())


class StaticExplorer:
    """Pre-rendered frames with HTML range sliders: interactive in a static page, no kernel."""

    def __init__(self, title: str, labels: dict[str, list[str]], start: dict[str, int], frames: list[str]):
        self.title, self.labels, self.start, self.frames = title, labels, start, frames
        self.uid = "lx" + hashlib.sha1((title + json.dumps(labels)).encode()).hexdigest()[:10]

    def _index(self, positions: dict[str, int]) -> int:
        index = 0
        for name, labels in self.labels.items():
            index = index * len(labels) + positions[name]
        return index

    def _repr_html_(self) -> str:
        uid = self.uid
        rows = []
        for name, labels in self.labels.items():
            pos = self.start[name]
            rows.append(
                f"<label style='display:flex;gap:.6em;align-items:center;margin:.2em 0'>"
                f"<span style='min-width:7em'>{html.escape(name)}</span>"
                f"<input type='range' min='0' max='{len(labels) - 1}' step='1' value='{pos}' data-name='{html.escape(name)}'>"
                f"<output>{html.escape(labels[pos])}</output></label>")
        first = self.frames[self._index(self.start)]
        script = (
            f"(function(){{var root=document.getElementById('{uid}');"
            f"var frames={json.dumps(self.frames)};var labels={json.dumps(self.labels)};"
            "var names=Object.keys(labels);var inputs=root.querySelectorAll('input[type=range]');"
            "function update(){var i=0;names.forEach(function(n,k){var v=+inputs[k].value;"
            "inputs[k].nextElementSibling.textContent=labels[n][v];i=i*labels[n].length+v;});"
            "root.querySelector('img').src=frames[i];}"
            "inputs.forEach(function(el){el.addEventListener('input',update);});update();})();")
        return (f"<div class='lab-explorer' id='{uid}' style='border:1px solid #ddd;border-radius:6px;padding:.6em;margin:.5em 0'>"
                f"<div style='font-weight:600;margin-bottom:.3em'>{html.escape(self.title)}"
                f" <span style='font-weight:400;color:#777;font-size:.85em'>(static explorer: every setting pre-rendered)</span></div>"
                + "".join(rows)
                + f"<img alt='{html.escape(self.title)}' src='{first}' style='max-width:100%'>"
                + f"<script>{script}</script></div>")

    def __repr__(self) -> str:
        return f"StaticExplorer({self.title!r}, {len(self.frames)} frames)"
