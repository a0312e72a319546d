"""Thin CLI: `python scripts/dualspeed/reproduce.py` = `python -m dualspeed_lab.reproduce` (see --help)."""
from dualspeed_lab.reproduce.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
