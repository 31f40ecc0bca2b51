"""What the pipeline prints on the console: the cause of a failure, not four chained tracebacks.

Prefect logs a failed task or flow run with its traceback, once per task and again for the flow. For
our own error types (a missing model, a bad configuration, missing LPIPS weights...) the message is
the whole story and says what to do, so the console shows the message only. The Prefect API (the
UI) still receives every traceback, and any other exception keeps its traceback on the console too.
"""

from __future__ import annotations

import logging

OWN_PACKAGES = ("viewneti_core.", "viewneti_cli.", "flows.", "tasks.")


def is_own_error(exc: BaseException | None) -> bool:
    """An exception type defined in this project: its message was written for the user."""
    return exc is not None and type(exc).__module__.startswith(OWN_PACKAGES)


class ShortOwnErrors(logging.Formatter):
    """Formats like `inner`, leaving out the traceback of our own error types."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info and is_own_error(record.exc_info[1])):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None  # the record is shared with the API handler
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def shorten_console_errors() -> int:
    """Wrap the formatter of every Prefect console handler (call after `import prefect`); returns how
    many handlers were changed. Idempotent."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    changed = 0
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter, ShortOwnErrors):
                handler.setFormatter(ShortOwnErrors(handler.formatter))
                changed += 1
    return changed
