"""One folder per chapter, in the book's order; a paper folder never imports another.

Each holds ``method.py`` (the paper's equations, read top to bottom), ``experiments.py`` (one
config per scale in ``PRESETS``, the runs and the measurements behind the claims) and
``figures.py`` (figures and explorers), plus modules a paper needs of its own.
"""
