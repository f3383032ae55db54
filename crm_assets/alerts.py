"""Failure alerts (run-status sensors): filled in by the alerts work; none yet."""

from typing import Any

ALERT_SENSORS: list[Any] = []
