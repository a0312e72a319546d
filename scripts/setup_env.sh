#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install this package with its test extras.
# Every other package is installed at the exact version in constraints.txt (the set the tests and the
# documented figures were produced with); UNPINNED=1 installs the newest versions pyproject.toml allows.
# torch is installed first as the CPU wheel pin (torch==2.13.0 here) so no CUDA build is pulled in;
# on a GPU machine set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0") or preinstall torch yourself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${EXTRAS:-test}"
PIN=()
if [ "${UNPINNED:-0}" != 1 ]; then
    PIN=(-c constraints.txt)
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
if ! python -c "import torch" 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    pip install -q "$TORCH_SPEC"
fi
echo "[setup] installing llava-dualspeed[$EXTRAS] (editable, $([ ${#PIN[@]} -gt 0 ] && echo "pinned by constraints.txt" || echo "UNPINNED: newest allowed versions"))"
pip install -q "${PIN[@]}" -e ".[${EXTRAS}]"
python -c "import torch, transformers, peft; print(f'[setup] torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')"
