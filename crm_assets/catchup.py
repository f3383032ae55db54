"""Catch-up schedule for a missed or failed day: filled in by the retries work; none yet."""

from typing import Any

CATCHUP_SCHEDULES: list[Any] = []
