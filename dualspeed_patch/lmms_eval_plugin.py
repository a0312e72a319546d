"""The lmms-eval plug-in: `--model llava_dualspeed`, registered through lmms-eval's entry-point group
`lmms_eval.models` (declared in pyproject.toml, so it exists once this repository is pip-installed).

    python -m lmms_eval --model llava_dualspeed \\
        --model_args pretrained=<ckpt>,conv_template=vicuna_v1,device=cpu,device_map=auto,vtp_method=divprune,pruning_ratio=0.9 ...
    python -m dualspeed_patch.lmms_eval_plugin      # will the installed lmms-eval find it? (exit 1 and why if not)

This module imports nothing from lmms-eval at import time: lmms-eval loads the entry point while its own model
registry is being built, and the model class (`lmms_eval_model.py`) subclasses lmms-eval's wrapper, so it is
only named here, by path."""
from __future__ import annotations

import importlib
import importlib.metadata
import sys

MODEL_ID = "llava_dualspeed"
ENTRY_GROUP = "lmms_eval.models"
CLASS_PATH = "dualspeed_patch.lmms_eval_model.LlavaDualSpeed"
# lmms-eval 0.6.0 introduced the entry-point group (models/registry_v2.py); 0.5 and older know only the
# LMMS_EVAL_PLUGINS variable, and tell a user nothing about a plug-in they cannot see.
MIN_VERSION = "0.6.0"
FALLBACK = ("python -m dualspeed_patch.run --pruned --vtp_method divprune --pruning_ratio 0.9 "
            "lmms_eval --model llava --model_args pretrained=<ckpt>,...")


class PluginUnavailable(RuntimeError):
    """lmms-eval will not find `llava_dualspeed`; the message says why and what to do instead."""


def manifests():
    """The entry point's payload: lmms-eval calls it and registers what it returns."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)]


def _our_entry_point():
    for ep in importlib.metadata.entry_points(group=ENTRY_GROUP):
        if ep.name == MODEL_ID:
            return ep
    return None


def check() -> str:
    """Raise PluginUnavailable unless the lmms-eval installed here will offer `--model llava_dualspeed`;
    return a one-line description of what it will use."""
    from packaging.version import InvalidVersion, Version

    try:
        installed = importlib.metadata.version("lmms-eval")
    except importlib.metadata.PackageNotFoundError:
        raise PluginUnavailable(f"lmms-eval is not installed in {sys.prefix}: install lmms-eval>={MIN_VERSION} "
                                "with the constraints in docs/lmms_eval.md") from None
    try:
        too_old = Version(installed) < Version(MIN_VERSION)
    except InvalidVersion:
        too_old = False  # a local build: let the module check below decide
    if not too_old:
        try:
            importlib.import_module("lmms_eval.models.registry_v2")  # where 0.6+ reads the entry points
        except ImportError:
            too_old = True
    if too_old:
        raise PluginUnavailable(
            f"lmms-eval {installed} has no model entry points (the '{ENTRY_GROUP}' group arrived in lmms-eval "
            f"{MIN_VERSION}), so --model {MODEL_ID} is unknown to it. Upgrade lmms-eval to >={MIN_VERSION}, or "
            f"prune with lmms-eval's own llava model through the runner: {FALLBACK}")
    ep = _our_entry_point()
    if ep is None:
        raise PluginUnavailable(
            f"lmms-eval {installed} is fine, but no installed package declares the '{ENTRY_GROUP}' entry point "
            f"'{MODEL_ID}': this repository is importable here but not pip-installed (or was installed from an "
            f"older checkout). Run `pip install -e <this repository>` in {sys.prefix}.")
    return f"lmms-eval {installed}: --model {MODEL_ID} is registered by the entry point {ep.value} ({CLASS_PATH})"


def main(argv=None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(argv)
    try:
        print(check())
    except PluginUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
