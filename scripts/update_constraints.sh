#!/usr/bin/env bash
# Re-resolve the pinned versions: build a fresh venv with the newest versions pyproject.toml allows, then
# write its exact set to constraints.txt. Check it before committing: bash scripts/test.sh, then the
# README's main command, and compare its tables with docs/reproduce.md (update the figures if they moved).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV_NEW="${VENV_NEW:-.venv-unpinned}"
rm -rf "$VENV_NEW"
UNPINNED=1 VENV="$VENV_NEW" bash scripts/setup_env.sh
{
    echo "# The exact versions the tests and the documented figures were produced with (CPU, $("$VENV_NEW/bin/python" --version)), as"
    echo "# resolved on $(date -u +%Y-%m-%d) from pyproject.toml's bounds. scripts/setup_env.sh installs with it (pip -c) unless"
    echo "# UNPINNED=1; torch is pinned separately (TORCH_SPEC) so a GPU machine can take its own build."
    echo "# Regenerate: bash scripts/update_constraints.sh (see README, \"Upgrading the pinned versions\")."
    "$VENV_NEW/bin/pip" freeze --exclude-editable | grep -v '^torch=='
} > constraints.txt
echo "[constraints] wrote constraints.txt from $VENV_NEW; now: bash scripts/test.sh && bash scripts/reproduce.sh"
git --no-pager diff --stat -- constraints.txt 2>/dev/null || true
