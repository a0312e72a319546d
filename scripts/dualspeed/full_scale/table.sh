#!/usr/bin/env bash
# One of the paper's tables at full scale: train its recipes (train.sh), evaluate them on the nine
# benchmarks in normal and pruned inference (eval.sh), then summarise with llava.eval.summarize and the
# stage times.
#
# Usage: bash scripts/dualspeed/full_scale/table.sh TABLE [--skip-train] [--skip-eval]
#   TABLE: table2 (baseline / NaivePrune / DualSpeed), table1 (VTP methods), table3 (ablation), table4
#          (pruning in pretraining / SFT / both), fig5 (p and r), fig6 (isolator length), all
#   DRY_RUN=1 bash scripts/dualspeed/full_scale/table.sh table2     # every command, nothing run
#
# Writes under $RESULTS (./results/full_scale):
#   <TABLE>_normal.{md,csv}     normal inference, one row per recipe, "Avg. rel. (%)" vs the baseline
#   <TABLE>_pruned.{md,csv}     pruned inference as trained (with the isolator when the recipe has one, else
#                               without; a vtp-<method> recipe pruned by its own method)
#   <TABLE>_noiso.{md,csv}      pruned inference without the isolator
#   <TABLE>_speed.{md,csv}      wall clock and train_runtime per stage, speedup vs the baseline
#   table1 also: table1_baseline_vtp-<method>.{md,csv} (the baseline pruned at inference by each method)
# Environment: see common.sh (SEEDS: with several seeds the tables have one row per recipe and seed).

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
case "${1:-}" in ""|-h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$FS_DIR/$(basename "$0")"; sed -n '2,/^$/s/^# \{0,1\}//p' "$FS_DIR/common.sh"; exit 0 ;; esac
TABLE="$1"; shift
SKIP_TRAIN=0; SKIP_EVAL=0
for a in "$@"; do
    case "$a" in
        --skip-train) SKIP_TRAIN=1 ;;
        --skip-eval) SKIP_EVAL=1 ;;
        *) die "unknown option $a" ;;
    esac
done
read -r -a RECIPES <<< "$(table_recipes "$TABLE")"

[ "$SKIP_TRAIN" = 1 ] || bash "$FS_DIR/train.sh" "${RECIPES[@]}"
if [ "$SKIP_EVAL" != 1 ]; then
    bash "$FS_DIR/eval.sh" "${RECIPES[@]}"
    if [ "$TABLE" = table1 ] || [ "$TABLE" = all ]; then
        for m in cdpruner fastervlm random; do   # training-free VTP on the baseline, and each pruner as trained
            EVAL_VTP="$m" bash "$FS_DIR/eval.sh" --modes noiso baseline
            EVAL_VTP="$m" bash "$FS_DIR/eval.sh" --modes iso "vtp-$m"
        done
    fi
fi

mkdir -p "$RESULTS"
# summarize OUT_STEM MODE: one llava.eval.summarize table over the recipes and seeds (MODE: normal, pruned,
# noiso, vtp-<method> = the recipe pruned at inference by <method> without the isolator).
summarize() {
    local stem="$1" mode="$2" name seed ckpt label
    local -a runs=()
    for name in "${RECIPES[@]}"; do
        recipe "$name"
        for seed in $SEEDS; do
            ckpt="$(ckpt_name "$name" "$seed")"
            case "$mode" in
                normal) label="$ckpt" ;;
                pruned)  # as trained: a vtp-<method> recipe is pruned by its own method
                    local m="$EVAL_VTP"
                    case "$name" in vtp-?*) m="${name#vtp-}" ;; esac
                    label="${ckpt}_pruned-${m}-r${EVAL_P}"; [ "$HAS_ISO" = 1 ] || label="${label}-noiso" ;;
                noiso) label="${ckpt}_pruned-${EVAL_VTP}-r${EVAL_P}-noiso" ;;
                vtp-*) label="${ckpt}_pruned-${mode#vtp-}-r${EVAL_P}-noiso" ;;
            esac
            runs+=("${name}-s${seed}=${label}")
        done
    done
    # the baseline's normal inference (first seed) is the reference of every relative average
    local seed0="${SEEDS%% *}" ref_label
    if [ "$mode" = normal ]; then
        ref_label="baseline-s${seed0}"
    else
        ref_label="baseline-s${seed0}-normal"
        runs=("${ref_label}=$(ckpt_name baseline "$seed0")" "${runs[@]}")
    fi
    run -- python -m llava.eval.summarize --eval-dir "$EVAL_DIR" --runs "${runs[@]}" \
        --baseline "$ref_label" --out-md "$RESULTS/${stem}.md" --out-csv "$RESULTS/${stem}.csv"
}
summarize "${TABLE}_normal" normal
summarize "${TABLE}_pruned" pruned
summarize "${TABLE}_noiso" noiso
if [ "$TABLE" = table1 ]; then
    RECIPES=(baseline)
    for m in divprune cdpruner fastervlm random; do summarize "table1_baseline_vtp-$m" "vtp-$m"; done
fi

# stage times: wall clock and train_runtime, speedup vs the baseline of the same seed
[ "$DRY_RUN" = 1 ] && { echo "+ (speed table from $RESULTS/times/*.json)" >&2; exit 0; }
python - "$RESULTS" "$TABLE" "$MODEL_TAG" "$SEEDS" "${RECIPES[@]}" <<'EOF'
import csv, json, os, sys
results, table, tag, seeds, recipes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5:]
def load(name, seed, stage):
    try:
        with open(os.path.join(results, "times", f"{tag}-{name}-s{seed}.{stage}.json")) as f:
            r = json.load(f)
        return r.get("train_runtime_s") or r.get("wall_s"), r.get("wall_s")
    except OSError:
        return None, None
rows = []
for name in recipes:
    for s in seeds:
        (pt, pw), (st, sw) = load(name, s, "pretrain"), load(name, s, "sft")
        (bpt, _), (bst, _) = load("baseline", s, "pretrain"), load("baseline", s, "sft")
        tot = pt + st if pt and st else None
        btot = bpt + bst if bpt and bst else None
        sp = lambda b, x: f"{b / x:.2f}" if b and x else ""
        rows.append([f"{name}-s{s}", pt or "", st or "", tot or "", (pw or 0) + (sw or 0) or "",
                     sp(bpt, pt), sp(bst, st), sp(btot, tot)])
head = ["run", "pretrain train_runtime (s)", "SFT train_runtime (s)", "total (s)", "total wall (s)",
        "speedup pretrain", "speedup SFT", "speedup total"]
with open(os.path.join(results, f"{table}_speed.csv"), "w", newline="") as f:
    csv.writer(f).writerows([head] + rows)
fmt = lambda v: f"{v:.0f}" if isinstance(v, float) else str(v)
with open(os.path.join(results, f"{table}_speed.md"), "w") as f:
    f.write("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
    for r in rows:
        f.write("| " + " | ".join(fmt(v) for v in r) + " |\n")
print(open(os.path.join(results, f"{table}_speed.md")).read())
EOF
