"""Dagster's own console records as our JSON events, with the run's id.

Dagster's default console logger prints its own text format to stderr; a run's failure then
appears twice (the step and the run) in a format nobody greps, next to our JSON events with
another id. This logger replaces `console` in the code location: every Dagster record becomes
one JSON event (phase `dagster`), carrying the run id, the step key and the Dagster event type,
through the same redacting logger as everything else.
"""

import logging
from typing import Any

import dagster as dg

from app import json_logger
from app.runner import DAGSTER_WRAPPERS

_STATUS = {logging.ERROR: "error", logging.WARNING: "warn"}


def root_error_line(error: Any) -> str | None:
    """The user's exception inside Dagster's wrappers, as one line (no stack trace)."""
    while error is not None and getattr(error, "cause", None) is not None:
        if getattr(error, "cls_name", None) not in DAGSTER_WRAPPERS:
            break
        error = error.cause
    if error is None:
        return None
    lines = (getattr(error, "message", "") or "").strip().splitlines()
    return lines[0] if lines else getattr(error, "cls_name", None)


class DagsterJsonHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            meta: dict[str, Any] = dict(getattr(record, "dagster_meta", None) or {})
            event = meta.get("dagster_event")
            status = next(
                (
                    s
                    for level, s in sorted(_STATUS.items(), reverse=True)
                    if record.levelno >= level
                ),
                "ok",
            )
            message = str(meta.get("orig_message") or record.getMessage())
            data = getattr(event, "event_specific_data", None)
            error = root_error_line(getattr(data, "error", None))
            if error:
                message = f"{message} {error}"
            extras = {
                "level": record.levelname,
                "step_key": meta.get("step_key"),
                "event_type": getattr(event, "event_type_value", None),
                "job": meta.get("job_name"),
            }
            with json_logger.run_context(meta.get("run_id") or json_logger.get_run_id()):
                json_logger.log_event(
                    "dagster",
                    message,
                    status=status,
                    extras={k: v for k, v in extras.items() if v is not None},
                )
        except Exception:  # a log line must never break a run
            self.handleError(record)


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="Dagster records as newline-delimited JSON events (app.json_logger).",
)
def json_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    level = logging.getLevelName(str(init_context.logger_config["log_level"]).upper())
    logger = logging.Logger("crm.dagster", level=level if isinstance(level, int) else logging.INFO)
    logger.addHandler(DagsterJsonHandler())
    return logger
