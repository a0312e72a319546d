#!/usr/bin/env bash
# Create (or reuse) the virtual environment with UPSTREAM LLaVA (haotian-liu/LLaVA as published on PyPI,
# llava-torch==1.2.2.post1) on transformers 4.37.2 + a CPU torch, for running dualspeed_patch through
# upstream's own classes (tests/test_upstream_llava.py, tests/upstream/helpers.py).
#
#   bash tests/upstream/setup_upstream_env.sh        # idempotent; ~0.1 s when already up to date
#
# Env: UPSTREAM_VENV (default .venv-upstream, relative to the repo root), UPSTREAM_PYTHON (default python3,
# must be 3.11 for the local torch wheel), UPSTREAM_TORCH_SPEC (default torch==2.13.0).
#
# How: torch alone first, then every pin of requirements-upstream.txt, then llava-torch, all with
# --no-deps (and --no-build-isolation for the deepspeed sdist), so pip never resolves a plain `torch`
# requirement and never pulls a CUDA build. Our repo is NOT installed here (its deps would pull
# transformers 5), and our own llava/ must never be importable here: helpers.py puts only a folder with a
# dualspeed_patch symlink on PYTHONPATH and runs in a temp cwd. The venv is rebuilt from scratch when the
# stamp (hash of the pins, torch/llava specs, python version) differs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${UPSTREAM_VENV:-.venv-upstream}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PYTHON="${UPSTREAM_PYTHON:-python3}"
TORCH_SPEC="${UPSTREAM_TORCH_SPEC:-torch==2.13.0}"
LLAVA_SPEC="llava-torch==1.2.2.post1"
REQ="$HERE/requirements-upstream.txt"
STAMP="$VENV/.dualspeed-upstream-stamp"
LAYOUT=2  # bump when this script's install logic changes

T0=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }
log() { echo "[upstream-env] $*"; }
# pip, minus the harmless noise about the empty local mirror folders
pip_q() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONNOUSERSITE=1
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV || true

PYVER="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
if [ -z "${UPSTREAM_TORCH_SPEC:-}" ] && [ "${PYVER%.*}" != "3.11" ]; then
    # the CPU wheel in /opt/wheels is cp311; another python would fetch a multi-GB CUDA torch from PyPI
    echo "[upstream-env] python $PYVER: need 3.11 for the local CPU torch wheel (or set UPSTREAM_TORCH_SPEC)" >&2
    exit 1
fi
WANT="$({ cat "$REQ"; echo "$TORCH_SPEC"; echo "$LLAVA_SPEC"; echo "python=$PYVER"; echo "layout=$LAYOUT"; } | sha256sum | cut -d' ' -f1)"

# Serialize concurrent runs (two pytest sessions) on the same venv path.
LOCK="${TMPDIR:-/tmp}/dualspeed-upstream-$(echo -n "$VENV" | sha256sum | cut -c1-16).lock"
exec 9>"$LOCK"
flock 9

# Checks run from an empty folder with -P: the repo root (cwd) holds OUR llava/, which must not shadow upstream's.
NEUTRAL="$(mktemp -d)"
trap 'rm -rf "$NEUTRAL"' EXIT

is_ready() {
    [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] || return 1
    (cd "$NEUTRAL" && "$VENV/bin/python" -P -c '
import importlib.util as u, os, sys
specs = [u.find_spec(m) for m in ("torch", "transformers", "tokenizers", "peft", "deepspeed", "llava")]
ok = all(specs) and os.path.isfile(os.path.join(os.path.dirname(specs[-1].origin), "model", "language_model", "llava_llama.py"))
sys.exit(0 if ok else 1)
') >/dev/null 2>&1
}

if is_ready; then
    log "up to date: $VENV ($(since "$T0"))"
    exit 0
fi

if [ -e "$VENV" ]; then
    if [ ! -f "$VENV/pyvenv.cfg" ]; then
        echo "[upstream-env] refusing to replace $VENV: it exists but is not a virtual environment" >&2
        exit 1
    fi
    log "stamp differs or venv incomplete: rebuilding $VENV"
    rm -rf "$VENV"
fi

T=$(date +%s.%N)
"$PYTHON" -m venv "$VENV"
log "venv created with python $PYVER ($(since "$T"))"

T=$(date +%s.%N)
pip_q install -q --no-deps "$TORCH_SPEC"
log "installed $TORCH_SPEC ($(since "$T"))"

T=$(date +%s.%N)
# setuptools first: the deepspeed sdist is built (no isolation) with the venv's setuptools and torch.
pip_q install -q --no-deps "$(grep -E '^setuptools==' "$REQ")"
pip_q install -q --no-deps --no-build-isolation -r "$REQ"
log "installed $(grep -cE '^[A-Za-z0-9]' "$REQ") pins from $(basename "$REQ") ($(since "$T"))"

T=$(date +%s.%N)
pip_q install -q --no-deps "$LLAVA_SPEC"
log "installed $LLAVA_SPEC --no-deps ($(since "$T"))"

T=$(date +%s.%N)
# Import upstream modules directly (llava/model/__init__.py swallows import errors in a bare try/except).
(cd "$NEUTRAL" && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/python" -P -c '
import os, sys
import torch, transformers, tokenizers, accelerate, peft
import llava
import llava.model.language_model.llava_llama
from llava.model import LlavaLlamaForCausalLM, LlavaConfig
import llava.mm_utils, llava.conversation, llava.model.builder
import llava.train.llava_trainer, llava.train.train
from deepspeed import zero  # upstream maybe_zero_3 needs it
assert os.path.realpath(llava.__file__).startswith(os.path.realpath(sys.prefix)), llava.__file__
print(f"[upstream-env] torch {torch.__version__} (cuda={torch.version.cuda}), transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}, accelerate {accelerate.__version__}, peft {peft.__version__}")
print(f"[upstream-env] llava from {os.path.dirname(llava.__file__)}")
if torch.version.cuda is not None:
    print("[upstream-env] WARNING: a CUDA torch build got installed; expected the CPU wheel", file=sys.stderr)
' 2>&1 | { grep -v "real_accelerator.py" || true; })
log "import check ($(since "$T"))"

echo "$WANT" > "$STAMP"
log "ready: $VENV ($(since "$T0") total)"
