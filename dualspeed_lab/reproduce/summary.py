"""summary.md and effects.json: do the paper's claims show in these results, beyond their spread?

    path = write_summary(out, P, R, report, mds, meta)     # meta: seeds, wall_s, models and task for the header
    claims = effects(R, chance, P)                         # [{"claim", "diff", "spread", "verdict", ...}]

A difference counts only when it exceeds its spread (compare, verdict): the seeds' sample std, or with one
seed the standard error of an accuracy over its questions (Stat.spread); claims within one model (the mode
gap) are paired by seed (paired_claim).
"""
from __future__ import annotations

import math
import os
import platform
from typing import Dict, List, Optional, Tuple

from dualspeed_lab.reproduce.common import write_json
from dualspeed_lab.reproduce.plan import EvalSpec, duet_eval, fmt_num
from dualspeed_lab.reproduce.presets import Preset
from dualspeed_lab.reproduce.report import Report
from dualspeed_lab.reproduce.stats import Results, Stat


def compare(a: Stat, b: Stat) -> Tuple[Optional[float], Optional[float]]:
    """(mean(a) - mean(b), spread) with spread = sqrt(spread_a^2 + spread_b^2) (Stat.spread)."""
    if a.mean is None or b.mean is None:
        return None, None
    sa, sb = a.spread(), b.spread()
    spread = math.sqrt((sa or 0) ** 2 + (sb or 0) ** 2) if (sa is not None or sb is not None) else None
    return a.mean - b.mean, spread


def verdict(d: Optional[float], spread: Optional[float], direction: int) -> str:
    """'yes' when d has the expected sign beyond the spread, 'no' when the opposite, else 'within spread'."""
    if d is None:
        return "not measured"
    if spread is None or spread == 0:
        return ("yes" if d * direction > 0 else "no") + " (single run, spread unknown)"
    if d * direction > spread:
        return "yes"
    if d * direction < -spread:
        return "no (opposite, beyond the spread)"
    return "within spread (inconclusive)"


def effects(R: Results, chance: float, P: Preset) -> List[dict]:
    """The paper's claims, tested on these results (differences in accuracy points, times in seconds)."""
    out = []

    def add(claim, a, b, direction, unit, detail=""):
        d, s = compare(a, b)
        out.append({"claim": claim, "diff": d, "spread": s, "verdict": verdict(d, s, direction), "unit": unit,
                    "detail": detail})

    base = R.acc("baseline", "normal")
    add("The baseline learned the task (normal accuracy above chance)", base, Stat([chance], base.n), +1, "acc")
    add("NaivePrune loses accuracy on full sequences (normal inference, vs baseline)",
        R.acc("naiveprune", "normal"), base, -1, "acc")
    add("DualSpeed recovers it (normal inference, vs NaivePrune)", R.acc("dualspeed", "normal"),
        R.acc("naiveprune", "normal"), +1, "acc")
    matches_claim(out, "DualSpeed matches the baseline (normal inference; absolute difference within the spread)",
                  R.acc("dualspeed", "normal"), base)
    pruned_iso = EvalSpec(True, P.eval_vtp_method, P.eval_pruning_ratio, True).name
    pruned_noiso = EvalSpec(True, P.eval_vtp_method, P.eval_pruning_ratio, False).name
    add("DualSpeed with pruned inference (+ isolator) beats the baseline pruned at inference only",
        R.acc("dualspeed", pruned_iso), R.acc("baseline", pruned_noiso), +1, "acc")
    tb, td = R.time("baseline"), R.time("dualspeed")
    sp = R.speedup("dualspeed")
    detail = (f"speedup {sp.mean:.2f}×" + (f" ± {sp.std:.2f}" if sp.std is not None else "")) if sp.mean else ""
    add("DualSpeed trains faster than the baseline (total train_runtime)", tb, td, +1, "s", detail)
    cb, cd = R.time("baseline", kind="cpu"), R.time("dualspeed", kind="cpu")
    spc = R.speedup("dualspeed", kind="cpu")
    detail = (f"ratio {spc.mean:.2f}×" + (f" ± {spc.std:.2f}" if spc.std is not None else "")) if spc.mean else ""
    add("DualSpeed needs less CPU time than the baseline (both stages, whole scripts)", cb, cd, +1, "s", detail)
    # The mode gap within one model, paired by seed: seed-to-seed swings of the whole model cancel here, unlike in
    # the comparisons between recipes above.
    gap_np = R.mode_gap("naiveprune", "normal", pruned_noiso)
    gap_ds = R.mode_gap("dualspeed", "normal", pruned_iso)
    paired_claim(out, "NaivePrune is worse on full sequences than on the pruned ones it trained on (its mode gap, "
                      "paired by seed)", gap_np, R.acc("naiveprune", "normal"), R.acc("naiveprune", pruned_noiso), -1)
    narrowing = Stat([d - n for d, n in zip(gap_ds.values, gap_np.values)], gap_np.n) \
        if R.seeds("dualspeed") == R.seeds("naiveprune") else Stat([])
    paired_claim(out, "DualSpeed closes that gap (its full-minus-pruned difference vs NaivePrune's, paired by seed)",
                 narrowing,
                 R.acc("dualspeed", "normal"), R.acc("naiveprune", "normal"), +1)
    if "duet" in P.tables:
        duet_effects(out, add, R, P, base, tb)
    return out


def duet_effects(out: List[dict], add, R: Results, P: Preset, base: Stat, tb: Stat) -> None:
    """The duet table's questions, per average reduction: does each recipe keep the baseline's full-sequence
    accuracy, does training with DUET beat using it training-free, and which fast mode serves DualSpeed better."""
    for red in P.duet_reductions:
        tag, pct = fmt_num(red), f"{100 * red:.0f}%"
        trained, ds_duet, ds_div = f"duet-trained-{tag}", f"ds-duet-{tag}", f"ds-divprune-{tag}"
        if not (R.has(trained) or R.has(ds_duet)):
            continue
        reduced = duet_eval(P, red, iso=False).name
        matches_claim(out, f"[{pct}] DualSpeed (DUET A+B) matches the baseline (normal inference)",
                      R.acc(ds_duet, "normal"), base)
        matches_claim(out, f"[{pct}] DUET trained matches the baseline (normal inference)",
                      R.acc(trained, "normal"), base)
        add(f"[{pct}] DUET trained beats DUET used at inference only on the baseline (reduced inference)",
            R.acc(trained, reduced), R.acc("baseline", reduced), +1, "acc")
        add(f"[{pct}] DualSpeed's fast mode: DUET A+B beats divprune (normal inference)",
            R.acc(ds_duet, "normal"), R.acc(ds_div, "normal"), +1, "acc")
        for v, name in ((ds_duet, "DualSpeed (DUET A+B)"), (trained, "DUET trained"), (ds_div, "DualSpeed (divprune)")):
            # train_runtime, and CPU seconds, which other jobs on shared cores disturb far less
            for kind, what in (("train", "total train_runtime"), ("cpu", "CPU seconds, both stages' scripts")):
                sp = R.speedup(v, kind=kind)
                detail = (f"speedup {sp.mean:.2f}×" + (f" ± {sp.std:.2f}" if sp.std is not None else "")
                          if sp.mean else "")
                add(f"[{pct}] {name} trains faster than the baseline ({what})", R.time("baseline", kind=kind),
                    R.time(v, kind=kind), +1, "s", detail)


def matches_claim(out: List[dict], claim: str, a: Stat, base: Stat) -> None:
    """'yes' when |a - base| is within the spread."""
    d, s = compare(a, base)
    out.append({"claim": claim, "diff": d, "spread": s, "unit": "acc", "detail": "",
                "verdict": "not measured" if d is None else
                ("yes" if s is not None and abs(d) <= s else
                 ("no (better than the baseline)" if d > 0 else "no (below the baseline)"))})


def paired_claim(out: List[dict], claim: str, diffs: Stat, a: Stat, b: Stat, direction: int) -> None:
    """A claim on per-seed differences: the spread is their sample std; with one seed, that of the two
    accuracies behind the one difference (compare)."""
    if diffs.mean is None:
        d, s = None, None
    else:
        d, s = diffs.mean, diffs.std if diffs.k > 1 else compare(a, b)[1]
    agree = sum(1 for x in diffs.values if x * direction > 0)
    out.append({"claim": claim, "diff": d, "spread": s, "verdict": verdict(d, s, direction), "unit": "acc",
                "detail": f"that way in {agree} of {diffs.k} seeds" if diffs.k else ""})


def load_line(R: Results) -> str:
    loads = [st.get(k) for runs in R.by.values() for r in runs.values() for st in r["stages"].values()
             for k in ("loadavg_before", "loadavg_after")]
    loads = [x for x in loads if x is not None]
    if not loads:
        return "- load: not recorded"
    busy = max(loads) > (os.cpu_count() or 1)
    return (f"- 1-min load average around the training stages: {min(loads):.1f} to {max(loads):.1f} on "
            f"{os.cpu_count()} CPUs" + (" (above the CPU count: other jobs shared the cores and stretched the wall "
                                        "clock)" if busy else ""))


def write_summary(out: str, P: Preset, R: Results, report: Report, mds: Dict[str, str], meta: dict) -> str:
    eff = effects(R, report.chance, P)
    learned = eff[0]["verdict"].startswith("yes")
    lines = [f"# DualSpeed reproduction: `{P.name}` preset", "",
             f"- models: {meta.get('models_source')} (LLM `{meta.get('model')}`, vision tower `{meta.get('vision_tower')}`)",
             f"- task: `{meta.get('task_root')}`; {len(report.questions)} test questions "
             f"({', '.join(report.types)}); chance {100 * report.chance:.1f}%",
             f"- seeds: {', '.join(str(s) for s in meta.get('seeds', []))}; pretrain {P.pretrain_steps} steps × "
             f"{P.pretrain_batch}, SFT {P.sft_steps} steps × {P.sft_batch} (LoRA r={P.lora_r}); "
             f"DualSpeed p = {P.pruning_ratio:g}, r = {P.slow_mode_ratio:g}, isolator {P.isolator_len}, {P.vtp_method}",
             "- driver wall clock: " + (f"{meta['wall_s']:.0f} s (the last run in this folder, cached cells "
                                         "included)" if meta.get("wall_s") is not None else "not recorded")
             + f"; host: {platform.platform()}, {os.cpu_count()} CPUs",
             load_line(R),
             "", "## Does the paper's effect show?", "",
             "A difference counts only when it exceeds the spread: sqrt(s_a² + s_b²), with s the sample std over "
             "seeds, or with one seed the standard error of an accuracy over its n questions (Agresti-Coull: "
             "p̃ = (x+2)/(n+4), sqrt(p̃(1−p̃)/(n+4))); a timing from one run has no spread. Rows paired by seed "
             "take the sample std of their per-seed differences.", "",
             "| claim | difference | spread | verdict |", "|---|---:|---:|---|"]
    for e in eff:
        scale, unit = (100, " pt") if e["unit"] == "acc" else (1, " s")
        d = "–" if e["diff"] is None else f"{e['diff'] * scale:+.1f}{unit}"
        s = "–" if e["spread"] is None else f"{e['spread'] * scale:.1f}{unit}"
        v = e["verdict"] + (f"; {e['detail']}" if e["detail"] else "")
        lines.append(f"| {e['claim']} | {d} | {s} | {v} |")
    lines.append("")
    if not learned:
        lines += ["**The baseline is not above chance beyond the spread: the models did not learn to use the image "
                  "in this run.** The accuracy rows above then only compare how well each recipe learned the answer "
                  "format and the answer priors (a recipe can still fall below chance, e.g. by answering out of "
                  "format on sequences it was not trained on); they say nothing about the paper's accuracy claims. "
                  "Expected with the untrained tiny assets; with the toy models, check that the toy LLM had its scene "
                  "warm-up and that SFT ran long enough (docs/reproduce.md, 'The fix, in part'). The timing rows do "
                  "not depend on it.", ""]
    else:
        shown = [e["claim"] for e in eff[1:4] if e["verdict"].startswith("yes")]
        lines += [f"Accuracy claims that show beyond the spread: {len(shown)} of 3" +
                  (f" ({'; '.join(shown)})." if shown else "."), ""]
        if len(meta.get("seeds", [])) < 2:
            lines += ["**One seed: the spread above is the sampling error of the test questions only, not the "
                      "spread of training.** On the toy task the training seed moves accuracies by far more (quick "
                      "preset, seeds 0-7: baseline 40.5-52.0 %, NaivePrune on full sequences 19.8-49.8 %; "
                      "docs/reproduce.md). Rerun with `--seeds 0 1 2` before trusting an accuracy verdict.", ""]
    lines += ["## Tables", ""]
    for md in mds.values():
        lines += [md, ""]
    lines += ["Files: " + ", ".join(sorted(os.path.basename(f) for f in report.files)) + ", results.json, cells/*.json",
              ""]
    path = os.path.join(out, "summary.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    write_json(os.path.join(out, "effects.json"), eff)
    return path
