"""The offline reproduction driver (dualspeed_lab.reproduce).

Fast: the plan (which cells share a pretraining run, which evaluations each cell gets), the statistics and
the "does the effect show?" wording on synthetic cell JSONs, and --dry-run.
Slow: the driver end to end on the reduced `smoke` preset (tiny models, 2 training steps, 3 questions)
through the real scripts, then a rerun that is served from the cache.
"""
import csv
import json
import os
import subprocess
import sys
import time

import pytest

from dualspeed_lab.reproduce import presets
from dualspeed_lab.reproduce import cli
from dualspeed_lab.reproduce.assets import prepare_task
from dualspeed_lab.reproduce.common import SCHEMA
from dualspeed_lab.reproduce.plan import NORMAL, EvalSpec, plan_cells, variant_name
from dualspeed_lab.reproduce.report import Report
from dualspeed_lab.reproduce.runner import Runner
from dualspeed_lab.reproduce.stats import Results, Stat
from dualspeed_lab.reproduce.summary import effects, write_summary
from dualspeed_lab.reproduce.tables import fmt_stat
from tests.helpers import BIN, ROOT

TYPES = ("color", "shape", "count", "position", "glyph", "exists", "size")


# ------------------------------------------------------------------------------------------- the plan
class _Args:
    launcher = "python"
    deepspeed_config = ""
    eval_device = "cpu"


def _runner(P):
    models = {"source": "x", "model": "/m/llm", "vision_tower": "/m/clip"}
    return Runner(P, _Args(), "/out", "/task", models, "/q.jsonl", [{"question_id": 1}], dry_run=True)


def test_full_plan_shares_pretraining_and_merges_identical_recipes():
    P = presets.FULL
    cells, alias = plan_cells(P)
    # sweep points equal to the defaults are DualSpeed itself
    for v in ("vtp-divprune", "p0.9", "r0.1", "l4"):
        assert v not in cells
    assert variant_name(P, "p", 0.9) == "dualspeed" and variant_name(P, "vtp", "random") == "vtp-random"
    r = _runner(P)
    key = lambda v: r.pretrain_key(cells[v], 0)  # noqa: E731
    # one pretraining run for recipes that differ only in SFT
    assert key("naiveprune") == key("fastslow") == key("l0")
    assert key("dualspeed") == key("fastslow-iso") == key("prune-pretrain-only") == key("r0") == key("r0.5")
    assert key("baseline") == key("prune-sft-only")
    assert len({key(v) for v in ("baseline", "naiveprune", "dualspeed", "p0.5", "vtp-random", "l8")}) == 6
    assert key("dualspeed") != r.pretrain_key(cells["dualspeed"], 1)  # per seed
    # SFT runs are all distinct
    assert len({r.sft_key(c, 0) for c in cells.values()}) == len(cells)
    # evaluations: isolator only where the model has one; Table 1 prunes the baseline with every method
    assert [e.name for e in cells["naiveprune"].evals] == ["normal", "pruned-divprune-p0.9-noiso"]
    assert [e.name for e in cells["dualspeed"].evals][:3] == ["normal", "pruned-divprune-p0.9-iso",
                                                              "pruned-divprune-p0.9-noiso"]
    base = {e.name for e in cells["baseline"].evals}
    assert {f"pruned-{m}-p0.9-noiso" for m in presets.VTP_METHODS} <= base
    assert "pruned-cdpruner-p0.9-iso" in {e.name for e in cells["vtp-cdpruner"].evals}
    assert "pruned-divprune-p0.5-iso" in {e.name for e in cells["p0.5"].evals}
    assert cells["prune-pretrain-only"].has_isolator is False and cells["prune-sft-only"].has_isolator is True


def test_commands_are_the_real_scripts_with_the_dualspeed_flags():
    P = presets.QUICK
    cells, _ = plan_cells(P)
    assert list(cells) == ["baseline", "naiveprune", "dualspeed"]
    r = _runner(P)
    env, argv = r.stage_command("pretrain", cells["baseline"], 3, "/o")
    assert argv[:2] == ["bash", "scripts/v1_5/pretrain.sh"] and env["DUALSPEED"] == "0"
    assert env["LAUNCHER"] == "python" and env["DEEPSPEED_CONFIG"] == "" and env["REPORT_TO"] == "none"
    assert env["OMP_NUM_THREADS"] == "1"
    for flag, value in (("--seed", "3"), ("--save_strategy", "no"), ("--bf16", "False"), ("--max_steps", "30"),
                        ("--dataloader_num_workers", "0")):
        assert argv[argv.index(flag) + 1] == value
    env, argv = r.stage_command("sft", cells["naiveprune"], 0, "/o2", "/p")
    assert argv[1] == "scripts/v1_5/finetune_lora.sh" and env["DUALSPEED"] == "1"
    assert env["PRETRAIN_MM_MLP_ADAPTER"] == "/p/mm_projector.bin"
    assert argv[argv.index("--slow_mode_ratio") + 1] == "0.0" and argv[argv.index("--use_isolator") + 1] == "False"
    spec = EvalSpec(True, "divprune", 0.9, False)
    cmd = r.eval_command(spec, "/sft", "/a.jsonl", 0)
    i = cmd.index("dualspeed_patch.run")
    assert cmd[i + 1:i + 2] == ["--pruned"] and "--no_isolator" in cmd
    assert cmd[cmd.index("--temperature") + 1] == "0" and cmd[cmd.index("--device") + 1] == "cpu"
    assert "dualspeed_patch.run" not in r.eval_command(NORMAL, "/sft", "/a.jsonl", 0)


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    rc = cli.main(["--preset", "full", "--models", "tiny", "--out", str(tmp_path / "out"),
                   "--cache-dir", str(tmp_path / "cache"), "--dry-run"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "== cell baseline" in text and "== cell vtp-fastervlm" in text and "== cell l8" in text
    assert "bash scripts/v1_5/finetune_lora.sh" in text and "dualspeed_patch.run --pruned" in text
    assert "21 cells x 3 seeds" in text
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_duet_table_plan_budgets_and_commands():
    """DUET's table: per average reduction, stage A's budget from stage B's schedule (toy: 3 layers, drops after
    1 and 2 keeping 0.5 and 0 -> layer factor 0.5: 380 and 127 of 576 tokens after stage A), the recipes'
    flags, and the evaluations passing the exact ratio training used."""
    from dualspeed_lab.reproduce.plan import duet_layer_factor, duet_stage_a_ratio
    from dualspeed_patch.pruners import budget

    P = presets.QUICK.replace(tables=("duet",))
    assert duet_layer_factor(P) == 0.5
    assert [budget(576, duet_stage_a_ratio(P, r)) for r in P.duet_reductions] == [380, 127]
    cells, _ = plan_cells(P)
    assert list(cells) == ["baseline"] + [f"{k}-{r}" for r in ("0.67", "0.89")
                                          for k in ("duet-trained", "ds-divprune", "ds-duet")]
    r = _runner(P)
    _, argv = r.stage_command("sft", cells["duet-trained-0.67"], 0, "/o", "/p")
    flag = lambda name: argv[argv.index(name) + 1]  # noqa: E731
    assert flag("--vtp_method") == "duet" and flag("--slow_mode_ratio") == "0.0" and flag("--use_isolator") == "False"
    assert flag("--duet_stage_b") == "True" and flag("--duet_stage_b_layers") == "1,2"
    assert flag("--duet_stage_b_ratios") == "0.5,0.0"
    _, argv = r.stage_command("pretrain", cells["ds-duet-0.89"], 0, "/o")
    assert budget(576, float(flag("--pruning_ratio"))) == 127 and flag("--use_isolator") == "True"
    _, argv = r.stage_command("sft", cells["ds-divprune-0.89"], 0, "/o", "/p")
    assert flag("--pruning_ratio") == "0.89" and "--duet_stage_b" not in argv
    # the baseline gets DUET training-free at each level; each recipe its own reduced inference, nothing else
    assert [e.name for e in cells["baseline"].evals] == [
        "normal", "pruned-duet-p0.340278-noiso-b1_2r0.5_0.0", "pruned-duet-p0.779514-noiso-b1_2r0.5_0.0"]
    assert [e.name for e in cells["ds-duet-0.67"].evals] == ["normal", "pruned-duet-p0.340278-iso-b1_2r0.5_0.0"]
    assert [e.name for e in cells["ds-divprune-0.67"].evals] == ["normal", "pruned-divprune-p0.67-iso"]
    cmd = r.eval_command(cells["ds-duet-0.67"].evals[1], "/sft", "/a.jsonl", 0)
    assert budget(576, float(cmd[cmd.index("--pruning_ratio") + 1])) == 380
    assert cmd[cmd.index("--duet_stage_b_layers") + 1] == "1,2" and "--no_isolator" not in cmd
    # the keys of every earlier recipe and evaluation are unchanged by the new fields
    assert EvalSpec(True, "divprune", 0.9, True).identity() == {"pruned": True, "method": "divprune",
                                                                 "ratio": 0.9, "isolator": True}
    assert cells["baseline"].key() == (("plain",), ("plain",))


def test_duet_table_and_claims_from_synthetic_results(tmp_path):
    P = presets.QUICK.replace(tables=("duet",), seeds=(0, 1))
    cells, alias = plan_cells(P)
    runs = []
    for s in P.seeds:
        for i, (name, cell) in enumerate(cells.items()):
            r = _cell(name, s, 0.5 + 0.01 * i, 100.0 - 5 * i, 200.0 - 10 * i)
            r["aliases"] = [name] + cell.aliases
            for e in cell.evals:
                r["evals"].setdefault(e.name, r["evals"]["normal"])
            r["stages"]["sft"]["visual_layer_avg_frac"] = 0.33
            runs.append(r)
    R = Results(runs, P.seeds)
    rep = Report(P, R, cells, alias, _questions(), str(tmp_path))
    md = rep.write_all()["duet"]
    assert "| DUET trained, 67% | 67% |" in md and "| DualSpeed (DUET A+B), 89% | 89% |" in md
    assert "| Baseline + DUET at inference only, 67% |" in md and "33.0%" in md
    assert "380 tokens at 67%, 127 tokens at 89%" in md
    claims = {c["claim"] for c in effects(R, 0.2, P)}
    assert "[67%] DualSpeed's fast mode: DUET A+B beats divprune (normal inference)" in claims
    assert "[89%] DUET trained beats DUET used at inference only on the baseline (reduced inference)" in claims


# -------------------------------------------------------------------------- statistics and wording
def _questions(per_type=10):
    return [{"question_id": f"q{t}{i}", "type": t, "answer": "x"} for t in TYPES for i in range(per_type)]


def _cell(name, seed, acc, pre_s, sft_s, pruned=None, key="k"):
    pruned = acc if pruned is None else pruned
    evals = {}
    for ev, a in (("normal", acc), ("pruned-divprune-p0.9-iso", pruned), ("pruned-divprune-p0.9-noiso", pruned)):
        evals[ev] = {"accuracy": a, "n": 70, "per_type": {t: {"accuracy": a, "n": 10} for t in TYPES}}
    return {"schema": SCHEMA, "cell": name, "label": name.capitalize(), "aliases": [name], "seed": seed,
            "config": {"key": key}, "evals": evals,
            "stages": {"pretrain": {"train_runtime_s": pre_s, "wall_s": pre_s + 10},
                       "sft": {"train_runtime_s": sft_s, "wall_s": sft_s + 10}}}


def _report(tmp_path, cells_json, P=presets.QUICK):
    cells, alias = plan_cells(P)
    R = Results(cells_json, P.seeds)
    return R, Report(P, R, cells, alias, _questions(), str(tmp_path))


def test_stats_relative_and_speedup_are_paired_by_seed(tmp_path):
    P = presets.QUICK.replace(seeds=(0, 1, 2))
    runs = []
    for s, (b, d) in enumerate(((0.80, 0.78), (0.70, 0.72), (0.90, 0.90))):
        runs.append(_cell("baseline", s, b, 100.0, 200.0))
        runs.append(_cell("dualspeed", s, d, 50.0, 100.0 + 10 * s))
    R, rep = _report(tmp_path, runs, P)
    st = R.acc("baseline", "normal")
    assert st.k == 3 and st.mean == pytest.approx(0.8) and st.std == pytest.approx(0.1)
    rel = R.rel("dualspeed", "normal")
    assert rel.values == pytest.approx([97.5, 720 / 7, 100.0])
    sp = R.speedup("dualspeed")
    assert sp.values == pytest.approx([2.0, 300 / 160, 300 / 170])
    assert R.time("dualspeed", "pretrain").mean == 50.0 and R.time("dualspeed", "total", "wall").mean == 180.0
    assert fmt_stat(st, "acc") == "80.0 ± 10.0" and fmt_stat(Stat([2.0]), "speedup") == "2.00×"
    # one seed: the spread of an accuracy is its Agresti-Coull standard error over n questions
    one = Stat([0.5], 96)
    assert one.std is None and one.spread() == pytest.approx(0.05)


def _three_variants(base, naive, ds, t_base=(100.0, 200.0), t_ds=(40.0, 80.0), seeds=(0, 1, 2), jitter=0.01):
    runs = []
    for i, s in enumerate(seeds):
        j = (i - 1) * jitter
        runs.append(_cell("baseline", s, base + j, *t_base))
        runs.append(_cell("naiveprune", s, naive + j, t_ds[0] * 0.9, t_ds[1] * 0.9))
        runs.append(_cell("dualspeed", s, ds + j, t_ds[0] + j, t_ds[1] + j))
    return runs


def test_summary_says_the_effect_shows_when_it_exceeds_the_spread(tmp_path):
    P = presets.QUICK.replace(seeds=(0, 1, 2))
    R, rep = _report(tmp_path, _three_variants(0.80, 0.60, 0.79), P)
    mds = rep.write_all()
    path = write_summary(str(tmp_path), P, R, rep, mds, {"seeds": [0, 1, 2], "wall_s": 1.0})
    text = open(path).read()
    eff = {e["claim"].split(" (")[0]: e for e in json.load(open(tmp_path / "effects.json"))}
    assert eff["The baseline learned the task"]["verdict"] == "yes"
    assert eff["NaivePrune loses accuracy on full sequences"]["verdict"] == "yes"
    assert eff["NaivePrune loses accuracy on full sequences"]["diff"] == pytest.approx(-0.2)
    assert eff["DualSpeed recovers it"]["verdict"] == "yes"
    assert eff["DualSpeed matches the baseline"]["verdict"] == "yes"
    assert eff["DualSpeed trains faster than the baseline"]["verdict"] == "yes"
    assert "speedup 2.50×" in text and "Accuracy claims that show beyond the spread: 3 of 3" in text
    assert "did not learn" not in text and "not above chance" not in text
    # the rows of Table 2 in Markdown and CSV
    md = open(tmp_path / "table2.md").read()
    assert "| Baseline | 80.0 ± 1.0 |" in md and "| DualSpeed | 79.0 ± 1.0 | 79.0 ± 1.0 |" in md
    with open(tmp_path / "table2.csv") as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    assert float(rows["NaivePrune"]["Rel. normal (%) mean"]) == pytest.approx(75.0, abs=0.5)
    assert float(rows["DualSpeed"]["Speedup mean"]) == pytest.approx(2.5, abs=0.01)
    assert rows["DualSpeed"]["Normal k"] == "3"
    for f in ("table2.png", "speed.png"):
        if (tmp_path / f).exists():
            assert (tmp_path / f).stat().st_size > 1000


def test_summary_is_inconclusive_within_the_spread_and_flags_a_model_at_chance(tmp_path):
    P = presets.QUICK.replace(seeds=(0, 1, 2))
    # differences of 2 points with a seed spread of 10 points: nothing shows
    R, rep = _report(tmp_path, _three_variants(0.60, 0.58, 0.60, jitter=0.10), P)
    eff = effects(R, rep.chance, P)
    assert eff[1]["verdict"] == "within spread (inconclusive)"
    assert eff[2]["verdict"] == "within spread (inconclusive)"
    # a baseline at chance: the summary says the comparison is uninformative
    chance = rep.chance
    R, rep = _report(tmp_path, _three_variants(chance, chance, chance), P)
    path = write_summary(str(tmp_path), P, R, rep, rep.write_all(), {"seeds": [0, 1, 2]})
    assert "did not learn to use the image" in open(path).read()
    # a baseline that learned: one seed gets the caveat that its spread ignores training, three seeds do not
    R, rep = _report(tmp_path, _three_variants(0.8, 0.6, 0.8), P)
    for seeds, caveat in (([0], True), ([0, 1, 2], False)):
        path = write_summary(str(tmp_path), P, R, rep, rep.write_all(), {"seeds": seeds})
        assert ("One seed: the spread above is the sampling error" in open(path).read()) is caveat
    # slower "DualSpeed": the timing claim says no
    R, rep = _report(tmp_path, _three_variants(0.8, 0.6, 0.8, t_ds=(150.0, 300.0)), P)
    eff = {e["claim"].split(" (")[0]: e for e in effects(R, rep.chance, P)}
    assert eff["DualSpeed trains faster than the baseline"]["verdict"].startswith("no")
    assert eff["DualSpeed needs less CPU time than the baseline"]["verdict"] == "not measured"


def test_full_preset_tables_from_synthetic_results(tmp_path):
    P = presets.FULL.replace(seeds=(0, 1))
    cells, alias = plan_cells(P)
    runs = []
    for s in P.seeds:
        for i, (name, cell) in enumerate(cells.items()):
            r = _cell(name, s, 0.5 + 0.01 * i, 100.0 - i, 200.0 - i)
            r["aliases"] = [name] + cell.aliases
            for e in cell.evals:
                r["evals"].setdefault(e.name, r["evals"]["normal"])
            runs.append(r)
    R = Results(runs, P.seeds)
    rep = Report(P, R, cells, alias, _questions(), str(tmp_path))
    mds = rep.write_all()
    assert set(mds) == set(presets.PAPER_TABLES)
    for key in ("table1", "table3", "table4", "fig5", "fig6"):
        assert (tmp_path / f"{key}.md").exists() and (tmp_path / f"{key}.csv").exists()
    assert "| cdpruner |" in mds["table1"] and "| + isolator |" in mds["table3"]
    assert "| SFT only |" in mds["table4"] and "| p = 0.5 |" in mds["fig5"] and "| l = 8 |" in mds["fig6"]


# ------------------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_driver_end_to_end_on_the_reduced_preset(tiny_assets, tmp_path):
    pytest.importorskip("matplotlib")
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, "-m", "dualspeed_lab.reproduce", "--preset", "smoke",
           "--out", str(out), "--cache-dir", str(cache), "--base-llm", tiny_assets["model"],
           "--vision-tower", tiny_assets["vision_tower"]]
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    first = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "reproduce[smoke]" in proc.stderr  # the progress bar

    for name in ("table2", "table2_per_type", "speed"):
        assert (out / f"{name}.md").stat().st_size > 0 and (out / f"{name}.csv").stat().st_size > 0
    for name in ("table2", "speed"):
        with open(out / f"{name}.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "Does the paper's effect show?" in summary and "NaivePrune loses accuracy" in summary
    assert "| Baseline |" in (out / "table2.md").read_text()

    results = json.loads((out / "results.json").read_text())
    assert {r["cell"] for r in results["cells"]} == {"baseline", "naiveprune", "dualspeed"}
    for r in results["cells"]:
        assert r["schema"] == SCHEMA and r["seed"] == 0 and r["preset"] == "smoke"
        assert set(r["stages"]) == {"pretrain", "sft"}
        for st in r["stages"].values():
            assert st["wall_s"] > 0 and st["train_runtime_s"] > 0 and st["steps"] == 2
            assert "scripts/v1_5/" in st["command"]
        want = {"normal", "pruned-divprune-p0.9-noiso"} | ({"pruned-divprune-p0.9-iso"} if r["has_isolator"] else set())
        assert set(r["evals"]) == want
        for e in r["evals"].values():
            assert e["n"] == 3 and e["missing"] == 0 and 0.0 <= e["accuracy"] <= 1.0
            assert sum(t["n"] for t in e["per_type"].values()) == 3
            with open(e["answers"]) as f:
                assert len(f.readlines()) == 3
    ds = next(r for r in results["cells"] if r["cell"] == "dualspeed")
    assert ds["has_isolator"] and ds["stages"]["sft"]["visual_kept_frac"] < 0.2
    assert "--dualspeed True" not in ds["stages"]["sft"]["command"] and "DUALSPEED=1" in ds["stages"]["sft"]["command"]
    base = next(r for r in results["cells"] if r["cell"] == "baseline")
    assert "DUALSPEED=0" in base["stages"]["pretrain"]["command"]

    # a rerun is served from the cell JSONs: no training, no evaluation
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + ["--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (proc.stdout + proc.stderr).count("(cached)") == 3
    assert time.perf_counter() - t0 < min(30.0, first / 2)


@pytest.mark.slow
def test_driver_runs_the_duet_table_on_the_reduced_preset(tiny_assets, tmp_path):
    """The duet table end to end on tiny models: every recipe trains through the scripts with its flags and is
    evaluated with its own reduced inference; the table and the claims are written."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dualspeed_lab.reproduce", "--preset", "smoke", "--tables", "duet",
           "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--base-llm", tiny_assets["model"],
           "--vision-tower", tiny_assets["vision_tower"], "--no-progress"]
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = {r["cell"]: r for r in json.loads((out / "results.json").read_text())["cells"]}
    assert set(results) == {"baseline", "duet-trained-0.67", "ds-divprune-0.67", "ds-duet-0.67"}
    for name in ("duet-trained-0.67", "ds-duet-0.67"):
        sft = results[name]["stages"]["sft"]
        assert "--duet_stage_b True" in sft["command"]
        # stage A keeps 2 x 576 x 0.33 / (1 + 0.5) = 253 tokens, stage B half of them after layer 1 of 2
        assert sft["visual_layer_avg_frac"] == pytest.approx((253 + 126) / 2 / 576, abs=1e-3)
    assert "pruned-duet-p0.560764-iso-b1r0.5" in results["ds-duet-0.67"]["evals"]
    table = (out / "duet.md").read_text()
    assert "| DualSpeed (DUET A+B), 67% | 67% |" in table
    assert "[67%] DUET trained matches the baseline" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_reruns_repeat(tiny_assets, tmp_path):
    """Same preset and seed in two folders: the same losses and the same answers."""
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "dualspeed_lab.reproduce", "--preset", "smoke",
               "--only", "baseline", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--base-llm",
               tiny_assets["model"], "--vision-tower", tiny_assets["vision_tower"], "--no-progress"]
        env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        cell = json.loads((out / "cells" / "baseline-s0.json").read_text())
        answers = {}
        for k, e in cell["evals"].items():
            with open(e["answers"]) as f:
                answers[k] = [json.loads(line)["text"] for line in f]
        runs.append(({s: cell["stages"][s]["train_loss"] for s in ("pretrain", "sft")}, answers))
    assert runs[0] == runs[1]


def test_no_progress_silences_the_one_time_task_build(tmp_path, capsys):
    P = presets.get("smoke")
    quiet = prepare_task(P, str(tmp_path / "quiet"), log=lambda *a: None, progress=False)
    assert os.path.isfile(os.path.join(quiet, "meta.json"))
    assert "img/s" not in capsys.readouterr().err
    prepare_task(P, str(tmp_path / "loud"), log=lambda *a: None, progress=True)
    assert "img/s" in capsys.readouterr().err  # the same build with its bars: the check above can fail


def test_mode_gap_claims_are_paired_by_seed(tmp_path):
    """Whole-model swings between seeds cancel in the within-model gap: NaivePrune 20 points worse on full
    sequences than pruned in every seed, DualSpeed with none, while the seeds' accuracies differ by 40 points."""
    P = presets.QUICK.replace(seeds=(0, 1, 2))
    runs = []
    for s, level in enumerate((0.3, 0.7, 0.5)):
        runs.append(_cell("baseline", s, level + 0.1, 100.0, 200.0))
        runs.append(_cell("naiveprune", s, level - 0.1 + 0.01 * s, 40.0, 80.0, pruned=level + 0.1))
        runs.append(_cell("dualspeed", s, level + 0.1, 40.0, 80.0))
    R, rep = _report(tmp_path, runs, P)
    gap = R.mode_gap("naiveprune", "normal", "pruned-divprune-p0.9-noiso")
    assert gap.values == pytest.approx([-0.2, -0.19, -0.18])
    eff = {e["claim"].split(" (")[0]: e for e in effects(R, rep.chance, P)}
    np_gap = eff["NaivePrune is worse on full sequences than on the pruned ones it trained on"]
    assert np_gap["diff"] == pytest.approx(-0.19) and np_gap["spread"] == pytest.approx(0.01)
    assert np_gap["verdict"] == "yes" and np_gap["detail"] == "that way in 3 of 3 seeds"
    assert eff["DualSpeed closes that gap"]["verdict"] == "yes"
    # the comparison between recipes sees the seed-to-seed swing and stays inconclusive
    assert eff["NaivePrune loses accuracy on full sequences"]["verdict"] == "within spread (inconclusive)"
    # one seed: the spread is that of the two accuracies behind the difference
    R1 = Results(runs, [0])
    one = {e["claim"].split(" (")[0]: e for e in effects(R1, rep.chance, P)}
    assert one["NaivePrune is worse on full sequences than on the pruned ones it trained on"]["spread"] > 0
