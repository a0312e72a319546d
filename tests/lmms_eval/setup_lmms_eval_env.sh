#!/usr/bin/env bash
# Create (or reuse) the virtual environment with the real lmms-eval package beside this repository
# (pip install -e), for tests/test_lmms_eval_harness.py: lmms-eval's own `llava` model and our
# `llava_dualspeed` plug-in, run offline on a tiny local task.
#
#   bash tests/lmms_eval/setup_lmms_eval_env.sh     # idempotent; ~0.1 s when up to date, ~1.5 min from scratch
#
# Env: LMMS_EVAL_VENV (default .venv-lmms-eval, relative to the repo root), LMMS_EVAL_PYTHON (default python3),
# TORCH_SPEC (default torch==2.13.0, the CPU wheel here).
#
# Its own venv, not the test extra: lmms-eval's pins clash with constraints.txt (see the header of
# constraints-lmms-eval.txt). The venv is rebuilt when the stamp (pins, pyproject.toml, torch spec, python)
# changes; pyproject.toml is in it because the plug-in's entry point lives in the installed metadata.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${LMMS_EVAL_VENV:-.venv-lmms-eval}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PYTHON="${LMMS_EVAL_PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PINS="$HERE/constraints-lmms-eval.txt"
LMMS_EVAL_SPEC="lmms-eval==0.7.3"
STAMP="$VENV/.dualspeed-lmms-eval-stamp"
LAYOUT=1  # bump when this script's install logic changes

T0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }
log() { echo "[lmms-eval-env] $*"; }
pip_q() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONNOUSERSITE=1
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV || true

PYVER="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
WANT="$({ cat "$PINS" "$ROOT/pyproject.toml"; echo "$TORCH_SPEC $LMMS_EVAL_SPEC python=$PYVER layout=$LAYOUT"; } \
        | sha256sum | cut -d' ' -f1)"

LOCK="${TMPDIR:-/tmp}/dualspeed-lmms-eval-$(echo -n "$VENV" | sha256sum | cut -c1-16).lock"
exec 9>"$LOCK"
flock 9

check_imports() {
    (cd "$ROOT" && HF_HUB_OFFLINE=1 "$VENV/bin/python" -c '
import importlib.util as u, os, sys
import torch, transformers, lmms_eval, llava, dualspeed_patch
from dualspeed_patch.lmms_eval_plugin import check
assert u.find_spec("torchvision") is None, "torchvision is installed (a CUDA build breaks transformers here)"
root = os.path.realpath(sys.argv[1])
for m in (llava, dualspeed_patch):  # the editable install of THIS checkout
    assert os.path.realpath(m.__file__).startswith(root), m.__file__
assert torch.version.cuda is None, f"a CUDA torch got installed: {torch.__version__}"
print("[lmms-eval-env]", check())
print(f"[lmms-eval-env] torch {torch.__version__}, transformers {transformers.__version__}")
' "$ROOT")
}

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && check_imports >/dev/null 2>&1; then
    log "up to date: $VENV ($(since "$T0"))"
    exit 0
fi

if [ -e "$VENV" ]; then
    if [ ! -f "$VENV/pyvenv.cfg" ]; then
        echo "[lmms-eval-env] refusing to replace $VENV: it exists but is not a virtual environment" >&2
        exit 1
    fi
    log "stamp differs or venv incomplete: rebuilding $VENV"
    rm -rf "$VENV"
fi

T=$(date +%s.%N)
"$PYTHON" -m venv "$VENV"
pip_q install -q "$TORCH_SPEC"
log "venv + $TORCH_SPEC ($(since "$T"))"

T=$(date +%s.%N)
pip_q install -q -c "$PINS" -e "$ROOT" "$LMMS_EVAL_SPEC"
pip_q uninstall -q -y torchvision
log "installed $LMMS_EVAL_SPEC and this repository (editable) with $(basename "$PINS") ($(since "$T"))"

check_imports
echo "$WANT" > "$STAMP"
log "ready: $VENV ($(since "$T0") total)"
