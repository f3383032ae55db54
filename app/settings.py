"""Runtime settings from the environment (and `.env`), validated once at start.

A wrong value should stop the process with one readable line naming the variable, not a
traceback from deep inside a run; `load_settings` turns pydantic's errors into that line.
"""

import datetime as dt
import zoneinfo
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CRON = "0 9 * * *"


def _is_valid_cron(expr: str) -> bool:
    """Dagster's own rule (5 fields, no 30 February); imported lazily, only for a custom value."""
    try:
        from croniter import croniter

        return bool(croniter.is_valid(expr)) and len(croniter.expand(expr)[0]) == 5
    except ImportError:
        from dagster._utils.schedules import is_valid_cron_string

        return bool(is_valid_cron_string(expr))


class ConfigError(Exception):
    """A configuration or scope problem: the CLI exits with code 2 and prints the message."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql+asyncpg://user:pass@host/db; unset = embedded Postgres",
    )
    ingest_batch_size: int = Field(default=3000, ge=1, le=1_000_000)
    data_dir: Path = Field(default=Path("./data"))
    tms_web: str | None = Field(default=None, description="portal main site (login, home)")
    tms_base: str | None = Field(default=None, description="portal reports site")
    tms_username: str | None = None
    tms_password: SecretStr | None = None
    json_log_file: Path | None = None
    timezone: str = Field(default="Asia/Kolkata")
    download_concurrency: int = Field(default=8, ge=1, le=64)
    download_rate_per_s: float = Field(default=20.0, gt=0, description="polite request rate")
    download_timeout_s: float = Field(default=60.0, gt=0)
    schedule_cron: str = Field(default=DEFAULT_CRON, description="daily schedule, in `timezone`")
    run_lock_wait_s: float = Field(
        default=600.0, ge=0, description="how long a second run of a date waits for the first"
    )
    # The first daily partition (the platform's go-live). Unset: the first day of the current
    # month in `timezone` (the portal's month-to-date exports cannot serve anything older).
    go_live_date: dt.date | None = Field(default=None, description="first partition, YYYY-MM-DD")
    # Catch-up: if today has not passed by `catchup_start`, try again every
    # `catchup_interval_h` hours until `catchup_cutoff` (times in `timezone`).
    catchup_start: dt.time = Field(default=dt.time(11, 0))
    catchup_interval_h: int = Field(default=2, ge=1, le=12)
    catchup_cutoff: dt.time = Field(default=dt.time(21, 0))
    # Alerts and report delivery by e-mail: off unless SMTP_HOST is set.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    smtp_from: str | None = None
    alert_to: str | None = Field(default=None, description="comma list of alert recipients")

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        raw = value.get_secret_value().strip()
        if not raw.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
            raise ValueError("must be a postgresql:// or postgresql+asyncpg:// URL")
        return SecretStr(raw)

    @field_validator("tms_web", "tms_base")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator(
        "tms_username",
        "tms_password",
        "go_live_date",
        "smtp_host",
        "smtp_username",
        "smtp_password",
        "smtp_from",
        "alert_to",
        mode="before",
    )
    @classmethod
    def _blank_is_missing(cls, value: object) -> object:
        """`TMS_PASSWORD=` in a .env is a forgotten value, not an empty password to log in with."""
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not text.strip():
            return None
        return value

    @field_validator("schedule_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        """A bad schedule must stop the process at start, not the daemon at 09:00."""
        value = " ".join(value.split())
        if value != DEFAULT_CRON and not _is_valid_cron(value):
            raise ValueError(f"{value!r} is not a 5-field cron expression (e.g. {DEFAULT_CRON!r})")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def missing_portal_settings(self) -> list[str]:
        """Names of the portal variables a real run needs but does not have."""
        missing = []
        for name in ("tms_web", "tms_base", "tms_username", "tms_password"):
            value = getattr(self, name)
            if value is None or (isinstance(value, SecretStr) and not value.get_secret_value()):
                missing.append(name.upper())
        return missing


def load_settings(**overrides: object) -> Settings:
    """Settings from env/.env; raises ConfigError naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
