"""Await a log message: the event a test can wait for where a component only logs."""

from __future__ import annotations

import asyncio
import logging


class LogWatch(logging.Handler):
    """Sets `seen` when `logger` logs a message containing `needle` (DEBUG on while inside)."""

    def __init__(self, needle: str, logger: str = "zflood.mesh") -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.seen = asyncio.Event()
        self.logger = logging.getLogger(logger)

    def __enter__(self) -> LogWatch:
        self.old_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.seen.set()
