"""Logging: structlog, JSON when stdout is not a terminal, readable console output when it is."""

from __future__ import annotations

import logging
import sys

import structlog

# Whether debug lines are written: hot paths test this before building a debug event (a
# filtered call through the lazy module-level logger still costs a few microseconds).
DEBUG = False


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and route stdlib loggers (aiohttp, asyncio) through it; idempotent."""
    console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer())
    numeric = getattr(logging, level.upper())
    global DEBUG
    DEBUG = numeric <= logging.DEBUG
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,  # a reload may change the level
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
