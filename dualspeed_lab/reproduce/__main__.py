"""`python -m dualspeed_lab.reproduce --help`: the paper-table driver's command line (cli.py)."""
import sys

from dualspeed_lab.reproduce.cli import main

sys.exit(main())
