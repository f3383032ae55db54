"""Newline-delimited JSON events: the one log format of the platform.

Every event has the same top-level fields (`ts, run_id, phase, bucket, store_code, date,
merged_file, counts, status, message, duration_ms, extras`) so that a person can grep one run
and a machine can aggregate counts without parsing prose. Secrets never reach the output:
`redact` scrubs passwords, tokens, cookies and DSN passwords from every string and mapping,
whoever wrote the event (our code or a library through the stdlib `logging` bridge).
"""

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

Status = Literal["ok", "warn", "error"]
COUNT_KEYS = ("download_total", "merged_rows", "ingested_rows")
FIELDS = (
    "ts",
    "run_id",
    "phase",
    "bucket",
    "store_code",
    "date",
    "merged_file",
    "counts",
    "status",
    "message",
    "duration_ms",
    "extras",
)

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("crm_run_id", default=None)
_PROCESS_RUN_ID = uuid.uuid4().hex[:12]

_SECRET_KEY_RE = re.compile(
    r"pass(word|wd)?|secret|token|cookie|authorization|api[_-]?key|session(id)?$|dsn|database_url",
    re.IGNORECASE,
)
_DSN_PASSWORD_RE = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@"
)
_KV_SECRET_RE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|token|secret|api[_-]?key|user_password)\b\s*[=:]\s*)"
    r"(?P<val>\"[^\"]*\"|'[^']*'|[^\s&;,]+)",
    re.IGNORECASE,
)
_COOKIE_HDR_RE = re.compile(r"(?P<key>\b(?:set-)?cookie\s*[:=]\s*)(?P<val>[^\n]+)", re.IGNORECASE)
REDACTED = "***"


def redact_text(text: str) -> str:
    """Scrub secrets from free text: DSN passwords, key=value secrets, cookie headers."""
    text = _DSN_PASSWORD_RE.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _KV_SECRET_RE.sub(lambda m: f"{m['key']}{REDACTED}", text)
    return _COOKIE_HDR_RE.sub(lambda m: f"{m['key']}{REDACTED}", text)


def redact(value: Any, key: str | None = None) -> Any:
    """Recursively scrub a value; a mapping key that names a secret hides its whole value."""
    if key is not None and _SECRET_KEY_RE.search(key) and value not in (None, "", {}):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v) for v in value]
    return value


def _default(obj: Any) -> Any:
    if isinstance(obj, (dt.date, dt.datetime, dt.time)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "get_secret_value"):
        return REDACTED
    return str(obj)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def get_run_id() -> str:
    return _run_id.get() or _PROCESS_RUN_ID


def set_run_id(run_id: str) -> contextvars.Token[str | None]:
    return _run_id.set(run_id)


@contextlib.contextmanager
def run_context(run_id: str | None = None) -> Iterator[str]:
    """Bind a run id to every event logged inside the block (async tasks inherit it)."""
    rid = run_id or new_run_id()
    token = _run_id.set(rid)
    try:
        yield rid
    finally:
        _run_id.reset(token)


class LogFileError(Exception):
    """`JSON_LOG_FILE` cannot be appended to: said once at start, not on the first event."""


def _open_sink(path: Path) -> IO[str]:
    """Open the file sink now, so a bad path stops the process before any work is done."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("a", encoding="utf-8")
    except OSError as exc:
        raise LogFileError(
            f"JSON_LOG_FILE {path}: cannot append to it ({exc.strerror or exc}): "
            "point it at a writable file or unset it"
        ) from None


class JsonLogger:
    """Writes one JSON object per line to stdout and, optionally, appends to a file."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: IO[str] | None = None
        self._file_path: Path | None = None
        self._file: IO[str] | None = None
        self._echo: Any = None  # optional callable(str) used while a rich progress bar is live

    def configure(
        self,
        *,
        stream: IO[str] | None = None,
        file_path: Path | str | None = None,
    ) -> None:
        with self._lock:
            self._stream = stream
            if self._file is not None:
                self._file.close()
                self._file = None
            self._file_path = None  # a sink that cannot be opened is not used at all
            path = Path(file_path) if file_path else None
            if path is not None:
                self._file = _open_sink(path)
            self._file_path = path

    def set_echo(self, echo: Any) -> None:
        """Route stdout lines through `echo` (e.g. a rich console above a progress bar)."""
        self._echo = echo

    def build(
        self,
        phase: str,
        message: str,
        *,
        status: Status = "ok",
        bucket: str | None = None,
        store_code: str | None = None,
        date: dt.date | str | None = None,
        merged_file: str | Path | None = None,
        counts: Mapping[str, int | None] | None = None,
        duration_ms: float | None = None,
        extras: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        full_counts: dict[str, int | None] | None = None
        if counts is not None:
            full_counts = {k: counts.get(k) for k in COUNT_KEYS}
            full_counts.update({k: v for k, v in counts.items() if k not in COUNT_KEYS})
        event = {
            "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "run_id": run_id or get_run_id(),
            "phase": phase,
            "bucket": bucket,
            "store_code": store_code,
            "date": date.isoformat() if isinstance(date, dt.date) else date,
            "merged_file": str(merged_file) if merged_file is not None else None,
            "counts": full_counts,
            "status": status,
            "message": message,
            "duration_ms": round(duration_ms, 1) if duration_ms is not None else None,
            "extras": dict(extras) if extras else {},
        }
        redacted: dict[str, Any] = redact(event)
        return redacted

    def emit(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(event, default=_default, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            if self._echo is not None:
                self._echo(line)
            else:
                stream = self._stream or sys.stdout
                stream.write(line + "\n")
                stream.flush()
            if self._file_path is not None:
                if self._file is None:
                    self._file = _open_sink(self._file_path)
                self._file.write(line + "\n")
                self._file.flush()

    def log(self, phase: str, message: str, **fields: Any) -> dict[str, Any]:
        event = self.build(phase, message, **fields)
        self.emit(event)
        return event


_LOGGER = JsonLogger()


def get_logger() -> JsonLogger:
    return _LOGGER


def configure(*, stream: IO[str] | None = None, file_path: Path | str | None = None) -> None:
    """Set the sinks (stdout by default; `JSON_LOG_FILE` adds a file) and bridge stdlib logging."""
    _LOGGER.configure(stream=stream, file_path=file_path)
    install_logging_bridge()


def log_event(phase: str, message: str, **fields: Any) -> dict[str, Any]:
    """Emit one event; see `JsonLogger.build` for the fields."""
    return _LOGGER.log(phase, message, **fields)


@dataclass
class Timer:
    """Mutable handle of a `timed` block: set counts, extras or status before it closes."""

    phase: str
    message: str
    fields: dict[str, Any]
    counts: dict[str, int | None] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    status: Status = "ok"
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


@contextlib.contextmanager
def timed(phase: str, message: str, **fields: Any) -> Iterator[Timer]:
    """Log one event when the block ends, with `duration_ms`; an exception logs status=error."""
    extras = fields.pop("extras", None) or {}
    timer = Timer(phase=phase, message=message, fields=dict(fields), extras=dict(extras))
    try:
        yield timer
    except BaseException as exc:
        extras = {**timer.extras, "error": f"{type(exc).__name__}: {exc}"}
        log_event(
            phase,
            f"{timer.message} failed",
            status="error",
            counts=timer.counts or None,
            duration_ms=timer.elapsed_ms,
            extras=extras,
            **timer.fields,
        )
        raise
    log_event(
        phase,
        timer.message,
        status=timer.status,
        counts=timer.counts or None,
        duration_ms=timer.elapsed_ms,
        extras=timer.extras,
        **timer.fields,
    )


class JsonLogHandler(logging.Handler):
    """Renders stdlib `logging` records (libraries, Alembic, pgserver) as our JSON events."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            status: Status = (
                "error"
                if record.levelno >= logging.ERROR
                else "warn"
                if record.levelno >= logging.WARNING
                else "ok"
            )
            message = record.getMessage()
            extras: dict[str, Any] = {"logger": record.name, "level": record.levelname}
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                extras["error"] = f"{type(exc).__name__}: {exc}"
            phase = getattr(record, "phase", None) or ("error" if status == "error" else "lib")
            _LOGGER.log(phase, message, status=status, extras=extras)
        except Exception:  # a log line must never break the pipeline
            self.handleError(record)


def install_logging_bridge(level: int = logging.WARNING) -> None:
    """Send library warnings and errors through the JSON logger instead of plain text."""
    root = logging.getLogger()
    if not any(isinstance(h, JsonLogHandler) for h in root.handlers):
        root.addHandler(JsonLogHandler())
    root.setLevel(min(root.level or logging.WARNING, level))
    for noisy in ("alembic", "pgserver", "httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
