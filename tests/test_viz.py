import re

import pytest

from lab.viz import Explorer, Source, figure, stamp


def render(a, b):
    fig, ax = figure(width=2, height=1.5)
    ax.plot([0, 1], [a, b])
    stamp(fig, "tiny", 0)
    return fig


def test_static_twin_has_every_frame_and_sliders(monkeypatch):
    ex = Explorer(render, {"a": [1, 2, 3], "b": [0.5, 1.5]}, title="demo", defaults={"b": 1.5})
    twin = ex.static()
    assert len(twin.frames) == 6 and len(set(twin.frames)) == 6
    page = twin._repr_html_()
    assert page.count("type='range'") == 2 and page.count("data:image/png;base64,") == 7   # 6 + initial
    assert "class='lab-explorer'" in page
    # the initial image is the default combination: a = 1 (index 0), b = 1.5 (index 1) -> frame 1
    first = re.search(r"<img alt='demo' src='([^']+)'", page).group(1)
    assert first == twin.frames[1]
    assert ex.static()._repr_html_() == page          # deterministic: same ids, same frames


def test_explorer_mode(monkeypatch):
    from lab.viz import explorer_mode
    monkeypatch.setenv("LAB_EXPLORERS", "static")
    assert explorer_mode() == "static"
    monkeypatch.setenv("LAB_EXPLORERS", "auto")
    assert explorer_mode() == "static"                # no kernel here
    monkeypatch.setenv("LAB_EXPLORERS", "fancy")
    with pytest.raises(ValueError, match="LAB_EXPLORERS must be one of"):
        explorer_mode()


def test_live_view_builds_widgets():
    ex = Explorer(render, {"a": [1, 2], "b": [0.0]}, title="demo")
    box = ex.live()
    sliders = box.children[1].children
    assert [s.description for s in sliders] == ["a", "b"]
    sliders[0].value = 2                               # re-renders without error


def test_explorer_rejects_bad_input():
    with pytest.raises(TypeError, match="render must be callable"):
        Explorer(None, {"a": [1]}, title="x")
    with pytest.raises(ValueError, match="params must name"):
        Explorer(render, {}, title="x")
    with pytest.raises(ValueError, match=r"params\['a'\] must list"):
        Explorer(render, {"a": []}, title="x")
    with pytest.raises(ValueError, match=r"defaults\['a'\] must be one of"):
        Explorer(render, {"a": [1, 2], "b": [0]}, title="x", defaults={"a": 5})
    with pytest.raises(ValueError, match="at most 120"):
        Explorer(render, {"a": range(11), "b": range(11)}, title="x")
    ex = Explorer(render, {"a": [1, 2], "b": [0]}, title="x")
    with pytest.raises(ValueError, match="a must be one of"):
        ex(a=7)
    with pytest.raises(ValueError, match="unknown parameter"):
        ex(c=1)


def test_source_shows_code():
    assert "def render" in Source(render)._repr_markdown_()
    with pytest.raises(TypeError, match="obj must be"):
        Source(3)


def test_stamp_keeps_clear_of_the_axis_labels():
    fig, ax = figure(width=6, height=2.5)
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("a label long enough to reach the corner of the figure .............")
    stamp(fig, "tiny", 3)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    label = ax.xaxis.label.get_window_extent(renderer)
    text = [t for t in fig.texts if t.get_text() == "scale: tiny · seed 3"][0].get_window_extent(renderer)
    assert label.y0 > text.y1, "the stamp overlaps the x label"
