"""Console logging for the command-line tools: fedsign's own lines, Flower's only when they matter."""

from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    logger = logging.getLogger("fedsign")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[fedsign] %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    if not os.environ.get("FEDSIGN_VERBOSE"):
        logging.getLogger("flwr").setLevel(logging.ERROR)  # hides Flower's per-run deprecation notices
