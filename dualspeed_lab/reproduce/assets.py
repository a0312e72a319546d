"""What the cells run on: the toy task, the base models and the test questions.

    root = prepare_task(P, cache_dir)                        # built once under cache_dir, then reused
    models = prepare_models(resolve_model_source(P, args), P, cache_dir, root, args)
    questions = select_questions(P, root)                    # the preset's test subset
    chance, chance_per_type = chance_of(questions)

Model sources: `toy` builds a pretrained tiny CLIP and a text- and scene-warmed tiny LLM
(dualspeed_lab/toy/models.py, build_toy_models); `tiny` uses the untrained tiny assets of
scripts/build_tiny_assets.py (plumbing only); `auto` takes toy when dualspeed_lab/toy/models.py exists;
--base-llm / --vision-tower name folders directly. task_root_for and model_paths_for give the paths without
building anything (--dry-run).
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from dualspeed_lab.reproduce.common import REPO, read_json, short_hash, write_json
from dualspeed_lab.reproduce.presets import Preset


def task_root_for(P: Preset, cache_dir: str) -> str:
    return os.path.join(cache_dir, f"task-s{P.task_seed}-{short_hash([P.task_sizes, list(P.question_types)])}")


def prepare_task(P: Preset, cache_dir: str, task_root: Optional[str] = None, log=print, progress: bool = True) -> str:
    if task_root:
        if not os.path.isfile(os.path.join(task_root, "meta.json")):
            raise SystemExit(f"--task-root {task_root}: no meta.json (build it with dualspeed_lab/toy/task.py)")
        return os.path.abspath(task_root)
    root = task_root_for(P, cache_dir)
    marker = os.path.join(root, ".complete.json")
    want = {"seed": P.task_seed, "sizes": P.task_sizes, "types": list(P.question_types)}
    if read_json(marker) == want:
        return os.path.abspath(root)
    from dualspeed_lab.toy.task import build_task

    log(f"[reproduce] building the toy task under {root} (sizes {P.task_sizes}, seed {P.task_seed}, "
        f"questions {', '.join(P.question_types)})")
    t0 = time.perf_counter()
    build_task(root, seed=P.task_seed, sizes=dict(P.task_sizes), progress=progress, types=P.question_types)
    write_json(marker, want)
    log(f"[reproduce] task built in {time.perf_counter() - t0:.1f} s")
    return os.path.abspath(root)


def toy_models_available() -> bool:
    return importlib.util.find_spec("dualspeed_lab.toy.models") is not None


def resolve_model_source(P: Preset, args) -> str:
    source = args.models or P.models
    if source == "auto":
        source = "toy" if toy_models_available() else "tiny"
    return source


def model_paths_for(source: str, P: Preset, cache_dir: str, task_root: str) -> dict:
    if source == "tiny":
        from dualspeed_lab.tiny.build import asset_paths

        return asset_paths(os.path.join(REPO, "playground", "tiny"))
    if source == "toy":
        from dualspeed_lab.toy.models import RECIPE  # a new build recipe must not reuse an old build

        root = os.path.join(cache_dir, f"toy-models-s{P.model_seed}-{short_hash([task_root, P.model_seed, RECIPE])}")
        done = read_json(os.path.join(root, ".complete.json")) or {}
        return {"root": root, **{k: done[k] for k in ("model", "vision_tower") if k in done}}
    raise SystemExit(f"unknown model source {source!r} (auto, toy, tiny)")


def prepare_models(source: str, P: Preset, cache_dir: str, task_root: str, args, log=print) -> dict:
    """{"source", "model" (base LLM folder), "vision_tower", "build_s"}."""
    t0 = time.perf_counter()
    if args.base_llm and args.vision_tower:  # both named: nothing to build
        return {"source": "custom", "model": os.path.abspath(args.base_llm),
                "vision_tower": os.path.abspath(args.vision_tower), "build_s": 0.0}
    if source == "tiny":
        from dualspeed_lab.tiny.build import build_all

        paths = build_all(os.path.join(REPO, "playground", "tiny"))
        out = {"model": paths["model"], "vision_tower": paths["vision_tower"]}
    else:
        root = model_paths_for(source, P, cache_dir, task_root)["root"]
        marker = os.path.join(root, ".complete.json")
        done = read_json(marker)
        if done and os.path.isdir(done.get("model", "")) and os.path.isdir(done.get("vision_tower", "")):
            out = {"model": done["model"], "vision_tower": done["vision_tower"]}
        else:
            if not toy_models_available():
                raise SystemExit("--models toy: dualspeed_lab/toy/models.py with build_toy_models() is not there yet")
            from dualspeed_lab.toy.models import build_toy_models

            log(f"[reproduce] building the toy models under {root} (seed {P.model_seed}); this runs once")
            built = build_toy_models(task_root, root, P.model_seed, progress=not getattr(args, "no_progress", False))
            out = {"model": os.path.abspath(built["model"]), "vision_tower": os.path.abspath(built["vision_tower"])}
            write_json(marker, dict(out, built_s=round(time.perf_counter() - t0, 1)))
    if args.base_llm:
        out["model"] = os.path.abspath(args.base_llm)
    if args.vision_tower:
        out["vision_tower"] = os.path.abspath(args.vision_tower)
    out["source"] = source + (" (overridden)" if (args.base_llm or args.vision_tower) else "")
    out["build_s"] = round(time.perf_counter() - t0, 1)
    return out


def select_questions(P: Preset, task_root: str) -> List[dict]:
    """Test questions: the first `eval_per_type` of each type in file order, then at most `eval_limit`."""
    with open(os.path.join(task_root, "test", "questions.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if P.eval_per_type is not None:
        seen: Counter = Counter()
        picked = []
        for r in rows:
            if seen[r["type"]] < P.eval_per_type:
                seen[r["type"]] += 1
                picked.append(r)
        rows = picked
    if P.eval_limit is not None:
        rows = rows[:P.eval_limit]
    if not rows:
        raise SystemExit("no test questions selected")
    return rows


def chance_of(rows: Sequence[dict]) -> Tuple[float, Dict[str, float]]:
    from dualspeed_lab.toy.task import CHANCE

    per_type = {t: CHANCE[t] for t in {r["type"] for r in rows}}
    overall = sum(CHANCE[r["type"]] for r in rows) / len(rows)
    return overall, per_type
