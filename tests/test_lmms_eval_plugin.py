"""The lmms-eval plug-in's registration and its errors, without lmms-eval installed (the real lmms-eval runs
in tests/test_lmms_eval_harness.py): which lmms-eval will see `--model llava_dualspeed`, and what a user
is told when it will not."""
import ast
import dataclasses
import importlib.metadata
import os
import sys
import types

import pytest

from dualspeed_patch import lmms_eval_plugin as plugin
from dualspeed_patch import run
from tests.helpers import ROOT


@dataclasses.dataclass
class FakeManifest:  # the fields lmms-eval 0.7.3's ModelManifest has
    model_id: str
    simple_class_path: str = None
    chat_class_path: str = None
    aliases: tuple = ()


def _installed(monkeypatch, version, registry=True):
    """Pretend lmms-eval `version` is installed; registry=False: it has no models/registry_v2.py."""
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: version if name == "lmms-eval" else real(name))
    registry_module = types.ModuleType("lmms_eval.models.registry_v2")
    registry_module.ModelManifest = FakeManifest
    monkeypatch.setitem(sys.modules, "lmms_eval", types.ModuleType("lmms_eval"))
    monkeypatch.setitem(sys.modules, "lmms_eval.models", types.ModuleType("lmms_eval.models"))
    monkeypatch.setitem(sys.modules, "lmms_eval.models.registry_v2", registry_module if registry else None)


def test_not_installed(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(plugin.PluginUnavailable, match=f"lmms-eval is not installed in {sys.prefix}"):
        plugin.check()


@pytest.mark.parametrize("version,registry", [("0.5.0", True), ("0.3.5", False), ("0.7.3", False)])
def test_an_lmms_eval_without_entry_points_is_named_with_the_way_out(monkeypatch, version, registry):
    _installed(monkeypatch, version, registry)
    with pytest.raises(plugin.PluginUnavailable) as e:
        plugin.check()
    message = str(e.value)
    assert f"lmms-eval {version} has no model entry points" in message
    assert "'lmms_eval.models' group arrived in lmms-eval 0.6.0" in message
    assert "--model llava_dualspeed is unknown to it" in message
    assert "python -m dualspeed_patch.run --pruned" in message and "lmms_eval --model llava " in message


def test_this_package_not_installed(monkeypatch):
    _installed(monkeypatch, "0.7.3")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    with pytest.raises(plugin.PluginUnavailable, match="not pip-installed .* Run `pip install -e"):
        plugin.check()


def test_the_installed_metadata_declares_the_entry_point(monkeypatch):
    """pyproject.toml's entry point, as this venv's (editable) install of the repository declares it."""
    _installed(monkeypatch, "0.7.3")
    assert plugin.check() == ("lmms-eval 0.7.3: --model llava_dualspeed is registered by the entry point "
                              "dualspeed_patch.lmms_eval_plugin:manifests "
                              "(dualspeed_patch.lmms_eval_model.LlavaDualSpeed)")
    ep = plugin._our_entry_point()
    assert ep.group == "lmms_eval.models" and ep.load() is plugin.manifests


def test_manifest_names_a_class_that_exists(monkeypatch):
    _installed(monkeypatch, "0.7.3")
    (manifest,) = plugin.manifests()
    assert manifest == FakeManifest("llava_dualspeed", "dualspeed_patch.lmms_eval_model.LlavaDualSpeed")
    module, cls = manifest.simple_class_path.rsplit(".", 1)
    with open(os.path.join(ROOT, *module.split(".")) + ".py") as f:  # importing it needs the real lmms-eval
        tree = ast.parse(f.read())
    bases = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert bases[cls] == ["Llava"]  # lmms-eval's own llava model, so model_args it knows keep working


def test_cli_exit_status(monkeypatch, capsys):
    _installed(monkeypatch, "0.5.0")
    assert plugin.main([]) == 1
    assert "error: lmms-eval 0.5.0 has no model entry points" in capsys.readouterr().err
    _installed(monkeypatch, "0.7.3")
    assert plugin.main([]) == 0
    assert "registered by the entry point" in capsys.readouterr().out


def test_runner_stops_before_lmms_eval_runs(monkeypatch):
    _installed(monkeypatch, "0.5.0")
    with pytest.raises(SystemExit, match="lmms-eval 0.5.0 has no model entry points"):
        run.main(["lmms_eval", "--model", "llava_dualspeed", "--model_args", "pretrained=x"])
    with pytest.raises(SystemExit, match="--pruned with lmms-eval's --model llava_dualspeed"):
        run.main(["--pruned", "lmms_eval", "--model=llava_dualspeed"])
