"""Presets of the offline reproduction driver (dualspeed_lab.reproduce).

A preset fixes what runs (tables, seeds), on what (toy task sizes, evaluation subset, model source) and how
long (steps, batch sizes, learning rates). Every field can be overridden from the command line; see
`python -m dualspeed_lab.reproduce --help`.

    quick   Table 2 (baseline / NaivePrune / DualSpeed; normal and pruned inference) plus the speed table,
            1 seed.
    full    every table and figure (Tables 1-4, Figures 5 and 6), 3 seeds.
    smoke   the reduced preset of the test suite: tiny untrained models, a few images, 2 training steps,
            3 evaluation questions. Checks the plumbing, measures nothing.

    from dualspeed_lab.reproduce import presets
    P = presets.get("quick").replace(seeds=(0, 1, 2))     # None values leave a field as it is

Run times: each preset's `expected` (shown by --help) and docs/reproduce.md, which also holds the
measurements behind the defaults below.

Seeds: the task (data) and the base models are fixed (`task_seed`, `model_seed`), as Vicuna, CLIP and the
datasets are in the paper; a run's `--seed` drives what training draws (projector and LoRA init, data order,
the fast/slow schedule, the random pruner), so the spread over seeds is the spread of training.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

# Tables and figures of the DualSpeed paper (the order in which they are reported), and every table the driver
# knows: those plus "duet", DUET-VLM's stages A and B beside DualSpeed (issue 13).
PAPER_TABLES: Tuple[str, ...] = ("table2", "speed", "table1", "table3", "table4", "fig5", "fig6")
ALL_TABLES: Tuple[str, ...] = PAPER_TABLES + ("duet",)
VTP_METHODS: Tuple[str, ...] = ("divprune", "cdpruner", "fastervlm", "random")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    tables: Tuple[str, ...]
    seeds: Tuple[int, ...]
    # --- data and models
    models: str = "auto"                 # auto (toy if dualspeed_lab/toy/models.py exists, else tiny) | toy | tiny
    task_seed: int = 0
    task_sizes: Dict[str, int] = field(default_factory=lambda: {"pretrain": 2000, "train": 2000, "val": 0,
                                                                 "test": 500})
    model_seed: int = 0
    # Question types of the task (dualspeed_lab/toy/task.py --types). The toy LLM (3 layers, width 128) learns the
    # single-lookup questions (colour of the unique shape, shape of the unique colour) in its warm-up; the
    # conjunctive, counting and relational types stay near chance in any CPU budget (docs/reproduce.md).
    question_types: Tuple[str, ...] = ("color", "shape")
    eval_per_type: Optional[int] = 20    # test questions per question type (None: all)
    eval_limit: Optional[int] = None     # cap on the number of test questions (after the per-type pick)
    # --- training (appended to scripts/v1_5/pretrain.sh and finetune_lora.sh; None: the script's default)
    pretrain_steps: Optional[int] = 60   # --max_steps (None: --num_train_epochs pretrain_epochs)
    pretrain_epochs: float = 1.0
    pretrain_batch: int = 8
    pretrain_lr: Optional[float] = 1e-3
    sft_steps: Optional[int] = 60
    sft_epochs: float = 1.0
    sft_batch: int = 8
    sft_lr: Optional[float] = 1e-3       # the 7B recipe's 2e-4 / 2e-5 learn the answer format too slowly
    # The projector must still find the scene warm-up's word-vector space in SFT (docs/reproduce.md).
    mm_projector_lr: Optional[float] = 3e-3
    lora_r: Optional[int] = 16           # the script's 128 is wider than a toy LLM
    lora_alpha: Optional[int] = 32
    model_max_length: int = 1024
    logging_steps: int = 5
    extra_train_flags: Tuple[str, ...] = ("--gradient_checkpointing", "False")
    # CPU threads per training/eval process (OMP_NUM_THREADS, MKL_NUM_THREADS). 1 by default: on cores shared
    # with other jobs, 2 OpenMP threads spin at every barrier while one of them is descheduled
    # (docs/reproduce.md). None: leave the environment alone (torch then uses every core).
    threads: Optional[int] = 1
    # --- DualSpeed (the paper's defaults)
    vtp_method: str = "divprune"
    pruning_ratio: float = 0.9
    slow_mode_ratio: float = 0.1
    isolator_len: int = 4
    # --- evaluation
    max_new_tokens: int = 3
    eval_vtp_method: str = "divprune"
    eval_pruning_ratio: float = 0.9
    # --- sweeps (full preset)
    vtp_methods: Tuple[str, ...] = VTP_METHODS
    p_values: Tuple[float, ...] = (0.5, 0.75, 0.9, 0.95)
    r_values: Tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5)
    isolator_lens: Tuple[int, ...] = (0, 1, 2, 4, 8)
    # --- the "duet" table: average visual-token reductions over the LLM's layers (DUET's measure), stage B's
    # schedule for the LLM's depth, and the visual tokens per image (the toy: 3 LLM layers, 576 patches)
    duet_reductions: Tuple[float, ...] = (0.67, 0.89)
    duet_stage_b_layers: str = "1,2"
    duet_stage_b_ratios: str = "0.5,0.0"
    duet_llm_layers: int = 3
    duet_visual_tokens: int = 576
    expected: str = ""                   # measured run time, for --help and the report

    def replace(self, **changes) -> "Preset":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


QUICK = Preset(
    name="quick",
    description="Table 2 + speed, 1 seed",
    tables=("table2", "speed"),
    seeds=(0,),
    # why 400 test questions and 120 SFT steps: docs/reproduce.md
    eval_per_type=200,
    pretrain_steps=30,
    sft_steps=120,
    expected="~9.5 min on 2 shared CPU cores, after a one-time build of the task and the toy models (~11 min)",
)

FULL = Preset(
    name="full",
    description="Tables 1-4 and Figures 5-6, 3 seeds",
    tables=PAPER_TABLES,
    seeds=(0, 1, 2),
    eval_per_type=200,
    pretrain_steps=150,
    sft_steps=300,
    expected="~8.5 h on 2 shared CPU cores (docs/reproduce.md); `--dry-run` prints the plan and an estimate",
)

SMOKE = Preset(
    name="smoke",
    description="reduced plumbing check for the test suite (tiny untrained models)",
    tables=("table2", "speed"),
    seeds=(0,),
    models="tiny",
    task_sizes={"pretrain": 8, "train": 8, "val": 0, "test": 4},
    eval_per_type=3,
    eval_limit=3,
    pretrain_steps=2,
    pretrain_batch=2,
    sft_steps=2,
    sft_batch=2,
    lora_r=4,
    lora_alpha=8,
    logging_steps=1,
    max_new_tokens=2,
    duet_reductions=(0.67,),
    duet_stage_b_layers="1",
    duet_stage_b_ratios="0.5",
    duet_llm_layers=2,
    expected="~2 min on 2 CPU cores",
)

PRESETS: Dict[str, Preset] = {p.name: p for p in (QUICK, FULL, SMOKE)}

# Rough per-run costs with the toy models on 2 shared CPU cores, for --dry-run's estimate only
# (where they come from: docs/reproduce.md).
COST = {
    "train_startup_s": 8.0,          # python + imports + model load + save, per training run
    "train_sample_s": 0.12,          # per sample (image), toy models, 1 thread
    "eval_startup_s": 4.0,           # per evaluation process
    "eval_question_s": 0.065,        # per question, greedy, toy models
}


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise SystemExit(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
