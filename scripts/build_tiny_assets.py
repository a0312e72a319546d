"""Thin CLI: `python scripts/build_tiny_assets.py` = `python -m dualspeed_lab.tiny.build` (see --help)."""
from dualspeed_lab.tiny.build import main

if __name__ == "__main__":
    raise SystemExit(main())
