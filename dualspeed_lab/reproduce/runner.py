"""Runs one cell (a recipe x a seed) through the scripts a user runs, and scores it.

    runner = Runner(P, args, out, task_root, models, questions_file, questions)
    result = runner.run_cell(cell, seed)     # the cell's JSON (out/cells/<cell>-s<seed>.json), as a dict

Each stage is a subprocess: `bash scripts/v1_5/pretrain.sh`, `bash scripts/v1_5/finetune_lora.sh` (DUALSPEED=1
plus the DualSpeed flags when pruned), then `python -m llava.eval.model_vqa_loader` for normal inference and
`python -m dualspeed_patch.run --pruned [--no_isolator] llava.eval.model_vqa_loader` for pruned inference.
Every stage is timed (wall clock, CPU seconds of its process tree, the Trainer's train_runtime) and keyed by
what determines it: a pretraining run is shared by every cell with the same pretraining recipe and seed, and a
stage, an evaluation or a cell whose result exists with the same key is not run again. stage_command and
eval_command give the commands without running them (--dry-run). A failing command raises StageFailed.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence, Tuple

from dualspeed_lab.reproduce.common import CONV_MODE, REPO, SCHEMA, read_json, short_hash, write_json
from dualspeed_lab.reproduce.plan import Cell, EvalSpec
from dualspeed_lab.reproduce.presets import Preset


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def read_trainer_state(output_dir: str) -> dict:
    """train_runtime, train_loss, steps and the mean of DualSpeed's logged fractions, when present."""
    state = read_json(os.path.join(output_dir, "trainer_state.json")) or {}
    out = {}
    slow, kept, layer_avg = [], [], []
    for entry in state.get("log_history", []):
        if "train_runtime" in entry:
            out["train_runtime_s"] = float(entry["train_runtime"])
            out["train_loss"] = entry.get("train_loss")
        if "dualspeed/slow_frac" in entry:
            slow.append(entry["dualspeed/slow_frac"])
        if "dualspeed/visual_kept_frac" in entry:
            kept.append(entry["dualspeed/visual_kept_frac"])
        if "dualspeed/visual_layer_avg_frac" in entry:
            layer_avg.append(entry["dualspeed/visual_layer_avg_frac"])
    if "global_step" in state:
        out["steps"] = state["global_step"]
    if slow:
        out["slow_frac"] = sum(slow) / len(slow)
    if kept:
        out["visual_kept_frac"] = sum(kept) / len(kept)
    if layer_avg:  # stage B: visual tokens averaged over the LLM's layers, of those before any reduction
        out["visual_layer_avg_frac"] = sum(layer_avg) / len(layer_avg)
    return out


def score_answers(answers_path: str, questions: Sequence[dict]) -> dict:
    from dualspeed_lab.toy.task import is_correct

    preds = {}
    if os.path.isfile(answers_path):
        with open(answers_path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    preds[str(r["question_id"])] = r.get("text", "")
    hits, n = Counter(), Counter()
    missing = 0
    for q in questions:
        n[q["type"]] += 1
        pred = preds.get(str(q["question_id"]))
        if pred is None:
            missing += 1
            continue
        hits[q["type"]] += bool(is_correct(pred, q["answer"]))
    total = sum(n.values())
    return {"accuracy": sum(hits.values()) / total, "n": total, "missing": missing,
            "per_type": {t: {"accuracy": hits[t] / n[t], "n": n[t]} for t in sorted(n)}}


class StageFailed(RuntimeError):
    pass


class Runner:
    def __init__(self, P: Preset, args, out: str, task_root: str, models: dict, questions_file: str,
                 questions: List[dict], dry_run: bool = False, echo=print):
        self.P, self.args, self.out = P, args, out
        self.task_root, self.models = task_root, models
        self.questions_file, self.questions = questions_file, questions
        self.dry_run, self.echo = dry_run, echo
        self.bin_dir = os.path.dirname(sys.executable)
        self.status = lambda text: None  # set by the progress bar

    # ---- configuration identity
    def train_hparams(self, kind: str) -> dict:
        P = self.P
        if kind == "pretrain":
            return {"steps": P.pretrain_steps, "epochs": P.pretrain_epochs, "batch": P.pretrain_batch,
                    "lr": P.pretrain_lr, "max_len": P.model_max_length, "extra": list(P.extra_train_flags)}
        return {"steps": P.sft_steps, "epochs": P.sft_epochs, "batch": P.sft_batch, "lr": P.sft_lr,
                "mm_projector_lr": P.mm_projector_lr, "lora": [P.lora_r, P.lora_alpha],
                "max_len": P.model_max_length, "extra": list(P.extra_train_flags)}

    def identity(self) -> dict:
        return {"model": self.models["model"], "vision_tower": self.models["vision_tower"],
                "task": self.task_root, "launcher": self.args.launcher, "deepspeed": self.args.deepspeed_config,
                "threads": self.P.threads}

    def pretrain_key(self, cell: Cell, seed: int) -> str:
        return short_hash([self.identity(), cell.pretrain.semantics("pretrain"), self.train_hparams("pretrain"), seed])

    def sft_key(self, cell: Cell, seed: int) -> str:
        return short_hash([self.pretrain_key(cell, seed), cell.sft.semantics("sft"), self.train_hparams("sft"), seed])

    def eval_key(self, spec: EvalSpec, seed: int) -> str:
        return short_hash([spec.identity(), self.questions_file, short_hash(self.questions), self.P.max_new_tokens,
                           self.args.eval_device, self.P.threads, seed])

    # ---- paths
    def pretrain_dir(self, cell: Cell, seed: int) -> str:
        sem = cell.pretrain.semantics("pretrain")
        tag = "plain" if sem[0] == "plain" else f"ds-{sem[1]}-p{sem[2]:g}-l{sem[3]}"
        return os.path.join(self.out, "runs", "pretrain", f"{tag}-{self.pretrain_key(cell, seed)}-s{seed}")

    def sft_dir(self, cell: Cell, seed: int) -> str:
        return os.path.join(self.out, "runs", "sft", f"{cell.name}-{self.sft_key(cell, seed)}-s{seed}")

    def cell_json(self, cell: Cell, seed: int) -> str:
        return os.path.join(self.out, "cells", f"{cell.name}-s{seed}.json")

    # ---- commands
    def _common_flags(self, kind: str, seed: int) -> List[str]:
        h = self.train_hparams(kind)
        flags = ["--bf16", "False", "--dataloader_num_workers", "0", "--per_device_train_batch_size", str(h["batch"])]
        if h["steps"]:
            flags += ["--max_steps", str(h["steps"])]
        else:
            flags += ["--num_train_epochs", f"{h['epochs']:g}"]
        if h["lr"] is not None:
            flags += ["--learning_rate", f"{h['lr']:g}"]
        if kind == "sft":
            if self.P.mm_projector_lr is not None:
                flags += ["--mm_projector_lr", f"{self.P.mm_projector_lr:g}"]
            if self.P.lora_r is not None:
                flags += ["--lora_r", str(self.P.lora_r)]
            if self.P.lora_alpha is not None:
                flags += ["--lora_alpha", str(self.P.lora_alpha)]
        flags += ["--seed", str(seed), "--save_strategy", "no", "--logging_steps", str(self.P.logging_steps),
                  "--model_max_length", str(self.P.model_max_length), *self.P.extra_train_flags]
        return flags

    def stage_command(self, kind: str, cell: Cell, seed: int, output_dir: str,
                      pretrain_dir: Optional[str] = None) -> Tuple[Dict[str, str], List[str]]:
        """(environment overrides, argv) of one training stage through the upstream-style script."""
        stage = cell.pretrain if kind == "pretrain" else cell.sft
        env = {"MODEL_NAME_OR_PATH": self.models["model"], "VISION_TOWER": self.models["vision_tower"],
               "OUTPUT_DIR": output_dir, "LAUNCHER": self.args.launcher,
               "DEEPSPEED_CONFIG": self.args.deepspeed_config, "REPORT_TO": "none",
               "DUALSPEED": "1" if stage.dualspeed else "0", **self.thread_env()}
        if kind == "pretrain":
            env.update(PRETRAIN_DATA_PATH=os.path.join(self.task_root, "pretrain", "pretrain.json"),
                       PRETRAIN_IMAGE_FOLDER=self.task_root)
            script = "scripts/v1_5/pretrain.sh"
        else:
            env.update(DATA_PATH=os.path.join(self.task_root, "train", "train.json"), IMAGE_FOLDER=self.task_root,
                       PRETRAIN_MM_MLP_ADAPTER=os.path.join(pretrain_dir, "mm_projector.bin"))
            script = "scripts/v1_5/finetune_lora.sh"
        argv = ["bash", script, *self._common_flags(kind, seed), *stage.cli()]
        return env, argv

    def eval_command(self, spec: EvalSpec, model_dir: str, answers: str, seed: int) -> List[str]:
        argv = [sys.executable, "-m"]
        if spec.pruned:
            # repr: the exact ratio training used (a rounded one can move budget() by a token)
            argv += ["dualspeed_patch.run", "--pruned", "--vtp_method", spec.method, "--pruning_ratio",
                     repr(float(spec.ratio)), "--seed", str(seed)]
            if not spec.isolator:
                argv.append("--no_isolator")
            if spec.stage_b:
                argv += ["--duet_stage_b", "--duet_stage_b_layers", spec.stage_b[0], "--duet_stage_b_ratios",
                         spec.stage_b[1]]
        argv += ["llava.eval.model_vqa_loader", "--model-path", model_dir, "--model-base", self.models["model"],
                 "--question-file", self.questions_file, "--image-folder", self.task_root, "--answers-file", answers,
                 "--conv-mode", CONV_MODE, "--temperature", "0", "--max_new_tokens", str(self.P.max_new_tokens),
                 "--num-workers", "0", "--device", self.args.eval_device]
        return argv

    def _env(self, overrides: Dict[str, str]) -> Dict[str, str]:
        env = dict(os.environ)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   PATH=self.bin_dir + os.pathsep + env.get("PATH", ""),
                   PYTHONPATH=REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""))
        env.update(overrides)
        return env

    def thread_env(self) -> Dict[str, str]:
        t = self.P.threads
        return {"OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t)} if t else {}

    @staticmethod
    def show(env: Dict[str, str], argv: Sequence[str]) -> str:
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv])

    def _run(self, env_over: Dict[str, str], argv: List[str], log_path: str) -> Tuple[float, float]:
        """Run one command (output to log_path); (wall seconds, CPU seconds of the whole process tree)."""
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "w") as log:
            log.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')}\n# {self.show(env_over, argv)}\n")
            log.flush()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(argv, cwd=REPO, env=self._env(env_over), stdout=log, stderr=subprocess.STDOUT)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if proc.returncode != 0:
            with open(log_path, errors="replace") as f:
                tail = f.read()[-6000:]
            raise StageFailed(f"exit {proc.returncode}: {self.show(env_over, argv)}\n--- {log_path} (tail) ---\n{tail}")
        return wall, cpu

    # ---- stages
    def ensure_stage(self, kind: str, cell: Cell, seed: int, pretrain_info: Optional[dict] = None) -> dict:
        if kind == "pretrain":
            run_dir, key = self.pretrain_dir(cell, seed), self.pretrain_key(cell, seed)
            output_dir = os.path.join(run_dir, "llava-pretrain")
        else:
            run_dir, key = self.sft_dir(cell, seed), self.sft_key(cell, seed)
            output_dir = os.path.join(run_dir, "llava-lora")
        info_path = os.path.join(run_dir, "stage.json")
        info = read_json(info_path)
        if info and info.get("key") == key and os.path.isdir(output_dir):
            return dict(info, reused=True)
        env, argv = self.stage_command(kind, cell, seed, output_dir,
                                       pretrain_info["output_dir"] if pretrain_info else None)
        if os.path.isdir(output_dir):
            shutil.rmtree(output_dir)  # a run that did not finish
        self.status(f"{cell.name} s{seed}: {kind}")
        load0 = _loadavg()
        wall, cpu = self._run(env, argv, os.path.join(run_dir, "train.log"))
        info = {"key": key, "stage": kind, "output_dir": output_dir, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                "dualspeed": (cell.pretrain if kind == "pretrain" else cell.sft).dualspeed,
                "semantics": list((cell.pretrain if kind == "pretrain" else cell.sft).semantics(kind)),
                "command": self.show(env, argv), "loadavg_before": load0, "loadavg_after": _loadavg(),
                "finished": datetime.datetime.now().isoformat(timespec="seconds"), "seed": seed}
        info.update(read_trainer_state(output_dir))
        write_json(info_path, info)
        return dict(info, reused=False)

    def ensure_eval(self, cell: Cell, seed: int, spec: EvalSpec, sft_info: dict) -> dict:
        run_dir = self.sft_dir(cell, seed)
        res_path = os.path.join(run_dir, "evals", f"{spec.name}.json")
        key = self.eval_key(spec, seed)
        done = read_json(res_path)
        if done and done.get("key") == key and done.get("sft_key") == sft_info["key"]:
            return done
        answers = os.path.join(run_dir, "answers", f"{spec.name}.jsonl")
        argv = self.eval_command(spec, sft_info["output_dir"], answers, seed)
        self.status(f"{cell.name} s{seed}: eval {spec.name}")
        wall, cpu = self._run(self.thread_env(), argv, os.path.join(run_dir, "logs", f"eval-{spec.name}.log"))
        res = {"key": key, "sft_key": sft_info["key"], "mode": asdict(spec), "name": spec.name,
               "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "answers": answers,
               "command": self.show(self.thread_env(), argv)}
        res.update(score_answers(answers, self.questions))
        write_json(res_path, res)
        return res

    def cell_config(self, cell: Cell, seed: int) -> dict:
        return {"pretrain": {"dualspeed": cell.pretrain.dualspeed, "flags": dict(cell.pretrain.flags),
                             "hparams": self.train_hparams("pretrain")},
                "sft": {"dualspeed": cell.sft.dualspeed, "flags": dict(cell.sft.flags),
                        "hparams": self.train_hparams("sft")},
                "key": self.sft_key(cell, seed)}

    def cached_cell(self, cell: Cell, seed: int) -> Optional[dict]:
        res = read_json(self.cell_json(cell, seed))
        if not res or res.get("schema") != SCHEMA or res.get("config", {}).get("key") != self.sft_key(cell, seed):
            return None
        if any(spec.name not in res.get("evals", {}) for spec in cell.evals):
            return None
        if res.get("questions_hash") != short_hash(self.questions):
            return None
        return res

    def run_cell(self, cell: Cell, seed: int) -> dict:
        cached = self.cached_cell(cell, seed)
        if cached:
            return dict(cached, cached=True)
        pre = self.ensure_stage("pretrain", cell, seed)
        sft = self.ensure_stage("sft", cell, seed, pre)
        evals = {spec.name: self.ensure_eval(cell, seed, spec, sft) for spec in cell.evals}
        stage_keys = ("wall_s", "cpu_s", "train_runtime_s", "train_loss", "steps", "slow_frac", "visual_kept_frac",
                      "visual_layer_avg_frac", "reused", "output_dir", "loadavg_before", "loadavg_after", "command")
        res = {
            "schema": SCHEMA, "cell": cell.name, "label": cell.label, "aliases": [cell.name] + cell.aliases,
            "seed": seed, "preset": self.P.name, "config": self.cell_config(cell, seed),
            "has_isolator": cell.has_isolator, "models": {k: self.models[k] for k in ("source", "model", "vision_tower")},
            "task_root": self.task_root, "questions_file": self.questions_file,
            "questions_hash": short_hash(self.questions),
            "stages": {"pretrain": {k: pre.get(k) for k in stage_keys}, "sft": {k: sft.get(k) for k in stage_keys}},
            "evals": {name: {k: e.get(k) for k in ("name", "mode", "accuracy", "n", "missing", "per_type", "wall_s",
                                                    "cpu_s", "answers")} for name, e in evals.items()},
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        }
        # pretraining reused from another cell still counts in this recipe's training time
        res["stages"]["pretrain"]["shared"] = pre.get("reused", False)
        write_json(self.cell_json(cell, seed), res)
        return dict(res, cached=False)
