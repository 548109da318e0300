"""Messages of the core and the plugins go through the `probekit` logger (`logging`).

Library users route or silence them as any library's (`logging.getLogger("probekit")`); during a
run they also reach the run's log: log.txt, and stderr unless `--quiet`. Plugins log to children
of it (`logging.getLogger("probekit.vit")`), not with `print` or `warnings`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probekit._context import RunContext

LOGGER = logging.getLogger("probekit")


class _RunHandler(logging.Handler):
    """Hands records to the run: warnings to `run.warn` (log and report), the rest to `run.log`."""

    def __init__(self, run: RunContext) -> None:
        super().__init__(logging.INFO)
        self.run = run

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            warn = getattr(self.run, "warn", None)
            if record.levelno >= logging.WARNING and warn is not None:
                warn(message)
            else:
                self.run.log(message)
        except Exception:  # a logging failure must not end the run
            self.handleError(record)


def route_to_run(run: RunContext) -> logging.Handler:
    """Send the `probekit` logger's records to `run` until `unroute` is called with the handler."""
    handler = _RunHandler(run)
    LOGGER.addHandler(handler)
    if LOGGER.level == logging.NOTSET or LOGGER.level > logging.INFO:
        LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # the run prints them itself (stderr unless quiet): not twice
    return handler


def unroute(handler: logging.Handler) -> None:
    """Stop sending the `probekit` logger's records to a run."""
    LOGGER.removeHandler(handler)
    if not any(isinstance(h, _RunHandler) for h in LOGGER.handlers):
        LOGGER.propagate = True
