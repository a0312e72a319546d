"""The paper-table driver: `python -m dualspeed_lab.reproduce --help`."""
