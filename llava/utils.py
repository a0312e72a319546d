"""Small utilities kept from upstream's llava.utils (logging helpers, disable_torch_init)."""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from llava.constants import LOGDIR

server_error_msg = "**NETWORK ERROR DUE TO HIGH TRAFFIC. PLEASE REGENERATE OR REFRESH THIS PAGE.**"
moderation_msg = "YOUR INPUT VIOLATES OUR CONTENT MODERATION GUIDELINES. PLEASE TRY AGAIN."

handler = None


def build_logger(logger_name, logger_filename):
    """A logger that also writes to LOGDIR/logger_filename (daily rotation)."""
    global handler
    formatter = logging.Formatter(fmt="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                                  datefmt="%Y-%m-%d %H:%M:%S")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO)
    logging.getLogger().handlers[0].setFormatter(formatter)
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.INFO)
    if handler is None:
        os.makedirs(LOGDIR, exist_ok=True)
        handler = logging.handlers.TimedRotatingFileHandler(os.path.join(LOGDIR, logger_filename), when="D", utc=True,
                                                            encoding="UTF-8")
        handler.setFormatter(formatter)
    logger.addHandler(handler)
    return logger


class StreamToLogger:
    """File-like object that redirects writes to a logger."""

    def __init__(self, logger, log_level=logging.INFO):
        self.terminal = sys.stdout
        self.logger = logger
        self.log_level = log_level
        self.linebuf = ""

    def __getattr__(self, attr):
        return getattr(self.terminal, attr)

    def write(self, buf):
        temp = self.linebuf + buf
        self.linebuf = ""
        for line in temp.splitlines(True):
            if line[-1] == "\n":
                self.logger.log(self.log_level, line.rstrip())
            else:
                self.linebuf += line

    def flush(self):
        if self.linebuf:
            self.logger.log(self.log_level, self.linebuf.rstrip())
        self.linebuf = ""


def disable_torch_init():
    """Skip the default init of Linear/LayerNorm: the weights are overwritten by a checkpoint anyway."""
    import torch

    setattr(torch.nn.Linear, "reset_parameters", lambda self: None)
    setattr(torch.nn.LayerNorm, "reset_parameters", lambda self: None)


def pretty_print_semaphore(semaphore):
    if semaphore is None:
        return "None"
    return f"Semaphore(value={semaphore._value}, locked={semaphore.locked()})"


def violates_moderation(text):
    """Upstream called the OpenAI moderation API; this offline codebase never sends text anywhere."""
    return False
