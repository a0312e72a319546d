"""`python -m dualspeed_lab.reproduce --help`: the paper-table driver's command line."""
import sys

from dualspeed_lab.reproduce.driver import main

sys.exit(main())
