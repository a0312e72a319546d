"""Run code inside the upstream-LLaVA venv (``.venv-upstream``), for testing dualspeed_patch on upstream.

Usage from a test (our own env, pytest)::

    from tests.upstream.helpers import run_upstream
    proc = run_upstream('''
    import dualspeed_patch, tiny_upstream, tempfile
    ...
    print("PASS something")
    ''')
    assert proc.returncode == 0, proc.stdout + proc.stderr

``run_upstream(code_or_script_path, *args)`` runs ``<venv>/bin/python -c CODE *args`` (or
``python SCRIPT *args`` when given an existing ``.py`` path) with:

* cwd = a fresh temp folder (never the repo root: our own ``llava/`` must not shadow upstream's);
* ``PYTHONPATH`` = a temp folder holding ONLY a ``dualspeed_patch`` symlink to this repo's package
  (when it exists), then ``tests/upstream`` (so ``import tiny_upstream`` works);
* offline HF env vars; ``PYTHONNOUSERSITE=1``; stdout/stderr captured as text.

The venv is created/checked once per process by ``ensure_upstream_env()`` (runs ``setup_upstream_env.sh``;
~0.2 s when up to date, ~1 min from scratch). Set ``DUALSPEED_SKIP_UPSTREAM=1`` to skip these tests
(``skip_requested()``); ``UPSTREAM_VENV`` picks another venv path (relative to the repo root).
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

UPSTREAM_DIR = Path(__file__).resolve().parent
REPO_ROOT = UPSTREAM_DIR.parent.parent
SETUP_SCRIPT = UPSTREAM_DIR / "setup_upstream_env.sh"
TINY_SCRIPT = UPSTREAM_DIR / "tiny_upstream.py"
PATCH_PACKAGE = "dualspeed_patch"
SKIP_ENV = "DUALSPEED_SKIP_UPSTREAM"

_state: dict = {}


class UpstreamEnvError(RuntimeError):
    """setup_upstream_env.sh failed; the message carries its output."""


def skip_requested() -> bool:
    return os.environ.get(SKIP_ENV, "") == "1"


def venv_dir() -> Path:
    p = Path(os.environ.get("UPSTREAM_VENV", ".venv-upstream"))
    return p if p.is_absolute() else REPO_ROOT / p


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def ensure_upstream_env(timeout: float = 1200) -> Path:
    """Run setup_upstream_env.sh once per process; return the venv's python. Raises UpstreamEnvError."""
    if "python" in _state:
        return _state["python"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    try:
        proc = subprocess.run(["bash", str(SETUP_SCRIPT)], cwd=str(REPO_ROOT), env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise UpstreamEnvError(f"{SETUP_SCRIPT} timed out after {timeout}s:\n{e.output or ''}") from e
    _state["setup_log"] = proc.stdout
    if proc.returncode != 0:
        raise UpstreamEnvError(f"{SETUP_SCRIPT} failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}")
    py = venv_python()
    if not py.exists():
        raise UpstreamEnvError(f"{SETUP_SCRIPT} succeeded but {py} is missing:\n{proc.stdout[-3000:]}")
    _state["python"] = py
    return py


def setup_log() -> str:
    return _state.get("setup_log", "")


def patch_only_dir() -> Path:
    """A temp folder whose only entry is a symlink ``dualspeed_patch`` -> this repo's package (if present).

    Putting the repo root on PYTHONPATH instead would make OUR ``llava/`` shadow upstream's.
    """
    if "patch_dir" not in _state:
        d = Path(tempfile.mkdtemp(prefix="dualspeed-patch-only-"))
        atexit.register(shutil.rmtree, str(d), True)
        _state["patch_dir"] = d
    d = _state["patch_dir"]
    src, link = REPO_ROOT / PATCH_PACKAGE, d / PATCH_PACKAGE
    if src.is_dir() and not link.exists():  # the package may appear after the first call
        link.symlink_to(src, target_is_directory=True)
    return d


def upstream_env_vars(extra_pythonpath=()) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = os.pathsep.join([str(patch_only_dir()), str(UPSTREAM_DIR), *map(str, extra_pythonpath)])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled", WANDB_DISABLED="true", PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1",
               PYTHONDONTWRITEBYTECODE="1")
    return env


def _looks_like_script(x) -> bool:
    if isinstance(x, Path):
        return True
    return isinstance(x, str) and "\n" not in x and x.endswith(".py") and os.path.isfile(x)


def run_upstream(code_or_script_path, *args, timeout: float = 600, env: dict | None = None,
                 extra_pythonpath=(), check: bool = False) -> subprocess.CompletedProcess:
    """Run Python code (a string) or a ``.py`` script inside the upstream venv; return the CompletedProcess
    (``stdout``/``stderr`` as text). ``args`` become ``sys.argv[1:]``. ``env`` entries are added on top.
    ``check=True`` raises ``AssertionError`` with the output when the exit code is not 0."""
    py = ensure_upstream_env()
    if _looks_like_script(code_or_script_path):
        script = Path(code_or_script_path).resolve()
        if not script.is_file():
            raise FileNotFoundError(script)
        if (script.parent / "llava").is_dir() and script.parent != UPSTREAM_DIR:
            # python puts the script's folder first on sys.path: its llava/ would shadow upstream's
            raise ValueError(f"{script}: its folder contains a llava/ package that would shadow upstream's")
        cmd = [str(py), str(script), *map(str, args)]
    else:
        cmd = [str(py), "-c", str(code_or_script_path), *map(str, args)]
    full_env = upstream_env_vars(extra_pythonpath)
    if env:
        full_env.update(env)
    with tempfile.TemporaryDirectory(prefix="upstream-cwd-") as cwd:
        proc = subprocess.run(cmd, cwd=cwd, env=full_env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"upstream run failed (exit {proc.returncode}): {cmd[:2]}\n"
                             f"--- stdout ---\n{proc.stdout[-8000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
    return proc


if __name__ == "__main__":  # python tests/upstream/helpers.py [script.py|code] [args...]
    target = sys.argv[1] if len(sys.argv) > 1 else str(TINY_SCRIPT)
    p = run_upstream(target, *sys.argv[2:])
    sys.stdout.write(p.stdout)
    sys.stderr.write(p.stderr)
    sys.exit(p.returncode)
