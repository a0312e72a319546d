# shellcheck shell=bash disable=SC2034
# Shared by scripts/dualspeed/full_scale/{train,eval,table}.sh: the paper's recipes on LLaVA-1.5-7B, the
# upstream data layout, and the DRY_RUN switch. Sourced, not run.
#
# Environment (defaults in brackets; paths as upstream LLaVA lays them out under ./playground/data):
#   MODEL_NAME_OR_PATH     [lmsys/vicuna-7b-v1.5]
#   VISION_TOWER           [openai/clip-vit-large-patch14-336]
#   PRETRAIN_DATA_PATH     [./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json]
#   PRETRAIN_IMAGE_FOLDER  [./playground/data/LLaVA-Pretrain/images]
#   DATA_PATH              [./playground/data/llava_v1_5_mix665k.json]
#   IMAGE_FOLDER           [./playground/data]
#   EVAL_DIR               [./playground/data/eval]  (LLaVA's eval.zip layout, see docs/evaluation.md)
#   CKPT_ROOT              [./checkpoints/dualspeed-7b]  pretraining runs and LoRA checkpoints
#   RESULTS                [./results/full_scale]        stage times, tables
#   LAUNCHER               [deepspeed]  (e.g. "deepspeed --num_gpus 8", "deepspeed --hostfile hosts")
#   PRETRAIN_DEEPSPEED     [./scripts/zero2.json]   SFT_DEEPSPEED [./scripts/zero3.json]
#                          (DualSpeed SFT under ZeRO-3 switches to zero3_no_inflight.json by itself)
#   SEEDS                  [42]  training seeds (the Trainer's default is 42); several: "42 43 44"
#   VTP [divprune]  P [0.9]  R [0.1]  L [4]: DualSpeed's defaults (pruner, pruning ratio, slow-mode ratio,
#                          isolator length)
#   EVAL_VTP [divprune]  EVAL_P [0.9]: pruned inference
#   BENCHMARKS             [vqav2 gqa sqa textvqa pope mme mmbench mmbench_cn seed]  (scripts/v1_5/eval/*.sh)
#   PRETRAIN_ARGS, SFT_ARGS  extra flags appended to every pretraining / SFT command (e.g. batch size for
#                          fewer GPUs: keep the global batch 256 / 128 with --gradient_accumulation_steps)
#   DRY_RUN=1              print the commands, run nothing
#
# Recipes (the rows of the paper's tables; NAME also names the checkpoints):
#   baseline               plain LLaVA-1.5 (pretrain + LoRA SFT)
#   naiveprune             pruning in training: every step fast, no isolator (r = 0)
#   dualspeed              DualSpeed (fast-slow r = R, isolator L, self-distillation)
#   fastslow               ablation: NaivePrune + fast-slow (r = R), no isolator, no distillation
#   fastslow-iso           ablation: + isolator (no distillation)
#   prune-pretrain-only    Table 4: DualSpeed pretraining, plain SFT
#   prune-sft-only         Table 4: plain pretraining, DualSpeed SFT
#   vtp-<method>           Table 1: DualSpeed with another pruner (cdpruner, fastervlm, random, ...)
#   p<ratio> / r<ratio> / l<len>   Figures 5 and 6: DualSpeed with another p, r or isolator length
# Pretraining runs are shared between recipes with the same pretraining (e.g. naiveprune and fastslow;
# dualspeed, fastslow-iso and every r<..>; baseline and prune-sft-only).

FS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$FS_DIR/../../.." && pwd)"

MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-lmsys/vicuna-7b-v1.5}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
PRETRAIN_DATA_PATH="${PRETRAIN_DATA_PATH:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
PRETRAIN_IMAGE_FOLDER="${PRETRAIN_IMAGE_FOLDER:-./playground/data/LLaVA-Pretrain/images}"
DATA_PATH="${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}"
IMAGE_FOLDER="${IMAGE_FOLDER:-./playground/data}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
CKPT_ROOT="${CKPT_ROOT:-./checkpoints/dualspeed-7b}"
RESULTS="${RESULTS:-./results/full_scale}"
LAUNCHER="${LAUNCHER:-deepspeed}"
PRETRAIN_DEEPSPEED="${PRETRAIN_DEEPSPEED-./scripts/zero2.json}"
SFT_DEEPSPEED="${SFT_DEEPSPEED-./scripts/zero3.json}"
SEEDS="${SEEDS:-42}"
VTP="${VTP:-divprune}"; P="${P:-0.9}"; R="${R:-0.1}"; L="${L:-4}"
EVAL_VTP="${EVAL_VTP:-divprune}"; EVAL_P="${EVAL_P:-0.9}"
BENCHMARKS="${BENCHMARKS:-vqav2 gqa sqa textvqa pope mme mmbench mmbench_cn seed}"
PRETRAIN_ARGS="${PRETRAIN_ARGS:-}"; SFT_ARGS="${SFT_ARGS:-}"
DRY_RUN="${DRY_RUN:-0}"
MODEL_TAG="${MODEL_TAG:-llava-v1.5-7b}"

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# run ENV=VALUE... -- CMD...: print the command; run it unless DRY_RUN=1.
run() {
    local -a envs=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    echo "+ ${envs[*]} $*" >&2
    [ "$DRY_RUN" = 1 ] && return 0
    env "${envs[@]}" "$@"
}

# recipe NAME: sets PRE_DS SFT_DS (0/1), PRE_FLAGS SFT_FLAGS (arrays), PRE_TAG (the shared pretraining's name)
# and HAS_ISO (1 when the SFT checkpoint carries a trained mode isolator).
recipe() {
    local name="$1" m="$VTP" p="$P" r="$R" l="$L" iso=True distill=True pre=ds sft=ds
    case "$name" in
        baseline) pre=plain; sft=plain ;;
        naiveprune) iso=False; r=0 ;;
        dualspeed) ;;
        fastslow) iso=False; distill=False ;;
        fastslow-iso) distill=False ;;
        prune-pretrain-only) sft=plain ;;
        prune-sft-only) pre=plain ;;
        vtp-?*) m="${name#vtp-}" ;;
        p[0-9]*) p="${name#p}" ;;
        r[0-9]*) r="${name#r}" ;;
        l[0-9]*) l="${name#l}" ;;
        *) die "unknown recipe '$name' (see scripts/dualspeed/full_scale/common.sh)" ;;
    esac
    local eff_l="$l"
    if [ "$iso" = False ] || [ "$l" = 0 ]; then eff_l=0; fi
    PRE_DS=0; SFT_DS=0; PRE_FLAGS=(); SFT_FLAGS=(); HAS_ISO=0; PRE_TAG=plain
    if [ "$pre" = ds ]; then
        PRE_DS=1
        PRE_FLAGS=(--vtp_method "$m" --pruning_ratio "$p" --isolator_len "$l" --use_isolator "$iso"
                   --pretrain_mode fast)
        PRE_TAG="ds-${m}-p${p}-l${eff_l}"
    fi
    if [ "$sft" = ds ]; then
        SFT_DS=1
        SFT_FLAGS=(--vtp_method "$m" --pruning_ratio "$p" --slow_mode_ratio "$r" --isolator_len "$l"
                   --use_isolator "$iso" --use_distillation "$distill")
        [ "$eff_l" = 0 ] || HAS_ISO=1
    fi
}

# Recipes of a table (the same rows as the offline driver, dualspeed_lab.reproduce).
table_recipes() {
    case "$1" in
        table2|speed) echo "baseline naiveprune dualspeed" ;;
        table1) echo "baseline dualspeed vtp-cdpruner vtp-fastervlm vtp-random" ;;
        table3) echo "baseline naiveprune fastslow fastslow-iso dualspeed" ;;
        table4) echo "baseline prune-pretrain-only prune-sft-only dualspeed" ;;
        fig5) echo "baseline p0.5 p0.75 dualspeed p0.95 r0 r0.2 r0.3 r0.5" ;;
        fig6) echo "baseline l0 l1 l2 dualspeed l8" ;;
        all) echo "baseline naiveprune dualspeed fastslow fastslow-iso prune-pretrain-only prune-sft-only" \
                  "vtp-cdpruner vtp-fastervlm vtp-random p0.5 p0.75 p0.95 r0 r0.2 r0.3 r0.5 l0 l1 l2 l8" ;;
        *) die "unknown table '$1' (table1 table2 table3 table4 fig5 fig6 speed all)" ;;
    esac
}

pretrain_dir() { echo "$CKPT_ROOT/pretrain-${PRE_TAG}-s$2"; }      # recipe must have been called
lora_dir() { echo "$CKPT_ROOT/${MODEL_TAG}-$1-s$2-lora"; }
ckpt_name() { echo "${MODEL_TAG}-$1-s$2"; }
