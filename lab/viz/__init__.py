"""Explorers (a live ipywidgets view and a static twin for the rendered book) and figure helpers."""
from .explorer import Explorer, explorer_mode
from .style import Source, figure, stamp

__all__ = ["Explorer", "Source", "explorer_mode", "figure", "stamp"]
