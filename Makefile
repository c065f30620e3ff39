# The two commands of the README:
#   make book   set up .venv, execute the chapters at tiny scale, build the HTML book in _build/html
#   make test   unit tests, notebook tests (nbval, claims asserted), the book build with warnings
#               as errors, checks of the rendered pages in headless Chromium, and every chapter
#               run in JupyterLab with its main explorer moved live
#   make course the chapters as nbgrader assignments in _build/course (source/ and release/)
# nbval's execution of the chapters is handed to the book build; the live check runs each
# chapter once more, warm (its training runs are checkpointed by then).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
JB := $(VENV)/bin/jupyter-book
STAMP := $(VENV)/.installed
export LAB_SCALE := tiny
export LAB_EXPLORERS := static
export LAB_RESULTS_DIR := $(CURDIR)/_build/results
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: book test setup html course clean

book: setup html

setup: $(STAMP) _vendor/mathjax/tex-chtml.js

$(STAMP): pyproject.toml tools/install.sh
	bash tools/install.sh $(VENV)
	touch $(STAMP)

_vendor/mathjax/tex-chtml.js: tools/vendor_js.sh
	bash tools/vendor_js.sh _vendor

html:
	$(PY) -m lab.book
	$(JB) build . -W -n --keep-going

test: setup
	$(PY) -m pytest -m "not rendered and not live" --nbval-lax --nbval-current-env --nbval-cell-timeout 1200 tests book
	$(MAKE) html
	$(PY) -m pytest -m "rendered or live" tests

course: setup
	$(PY) -m lab course build --out _build/course

clean:
	rm -rf _build
