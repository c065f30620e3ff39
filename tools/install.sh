#!/usr/bin/env bash
# Set up the virtual environment for the book and its tests: .venv at the repository root.
#  - An installed torch is never replaced: where the system Python already has torch (Colab, a
#    conda env), the venv sees it through --system-site-packages.
#  - Otherwise torch is installed first, chosen by hardware: with no NVIDIA GPU, TORCH_SPEC
#    defaults to torch==2.13.0, which resolves to the CPU build where one is provided locally;
#    set TORCH_SPEC to pin another (e.g. a CPU wheel index on your machine).
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "install: reusing the system's torch ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    DEFAULT_TORCH="torch>=2.1"
  else
    DEFAULT_TORCH="torch==2.13.0"
  fi
  echo "install: ${TORCH_SPEC:-$DEFAULT_TORCH}"
  # shellcheck disable=SC2086
  "${PIP[@]}" ${TORCH_SPEC:-$DEFAULT_TORCH}
fi
echo "install: lab with the book and test extras"
"${PIP[@]}" -e ".[book,test]"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
