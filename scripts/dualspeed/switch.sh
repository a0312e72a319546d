# Sourced by scripts/v1_5/{pretrain,finetune,finetune_lora}.sh: the DualSpeed switch.
#
# DualSpeed is on when DUALSPEED=1 or when the extra arguments contain a --dualspeed flag. Then the
# training entry becomes dualspeed_patch/train.py (which patches the LLaVA package and runs its train()),
# `--dualspeed True` is added, and a ZeRO-3 run defaults to scripts/zero3_no_inflight.json (prefetch off:
# fast and slow steps run the modules in different orders). Other DualSpeed flags (--vtp_method,
# --pruning_ratio, --slow_mode_ratio, ...) go in the extra arguments. Without the switch nothing changes.
dualspeed_switch() {
    DUALSPEED="${DUALSPEED:-0}"
    local arg
    for arg in "$@"; do
        case "$arg" in --dualspeed|--dualspeed=*) DUALSPEED=1 ;; esac
    done
    DUALSPEED_ARGS=()
    if [ "$DUALSPEED" = "1" ]; then
        TRAIN_ENTRY="${DUALSPEED_TRAIN_ENTRY:-dualspeed_patch/train.py}"
        DUALSPEED_ARGS=(--dualspeed True)
        if [ "${DEEPSPEED_CONFIG:-}" = "./scripts/zero3.json" ] && [ -z "${DEEPSPEED_CONFIG_SET_BY_USER:-}" ]; then
            DEEPSPEED_CONFIG="./scripts/zero3_no_inflight.json"
        fi
        echo "[dualspeed] on: entry ${TRAIN_ENTRY}, deepspeed config '${DEEPSPEED_CONFIG}'" >&2
    fi
}
