"""lab: the code behind *Explorable Papers*. Chapters import what they need from here.

Light on import: heavy modules (torch, matplotlib, accelerate) load when a submodule needs them.
"""
__version__ = "0.1.0"

from .scale import start as start  # noqa: E402  (light: the standard library and argument checks)
