"""Pytest fixtures for the portal simulator (owned by the downloader/simulator work).

`portal_sim`: a started simulator (4 stores, seed 7, a fixed mid-month date, no latency,
`Retry-After: 0`). `make_portal_sim(**SimConfig kwargs)`: more of them, each stopped at teardown.
`portal_creds(sim)` turns one into the downloader's credentials.
"""

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.downloader import PortalCredentials
from app.portal_sim import PortalSimulator, SimConfig

SIM_TODAY = dt.date(2026, 3, 18)
SIM_DEFAULTS: dict[str, Any] = {
    "store_count": 4,
    "seed": 7,
    "today": SIM_TODAY,
    "retry_after_s": 0,
    "slow_latency_s": 1.0,
}


def portal_creds(sim: PortalSimulator, *, password: str | None = None) -> PortalCredentials:
    return PortalCredentials(
        web_url=sim.web_url,
        base_url=sim.base_url,
        username=sim.username,
        password=sim.password if password is None else password,
    )


def sim_store_codes(**kwargs: Any) -> list[str]:
    """The codes a simulator with these settings will have, before starting it."""
    return PortalSimulator(SimConfig(**{**SIM_DEFAULTS, **kwargs})).store_codes


@pytest.fixture
def make_portal_sim() -> Iterator[Callable[..., PortalSimulator]]:
    started: list[PortalSimulator] = []

    def make(**kwargs: Any) -> PortalSimulator:
        sim = PortalSimulator(SimConfig(**{**SIM_DEFAULTS, **kwargs}))
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def portal_sim(make_portal_sim: Callable[..., PortalSimulator]) -> PortalSimulator:
    return make_portal_sim()
