"""Local, embedded-defaults entry points: `python -m app demo` and `python -m app ui`.

Only these use the built-in portal simulator, and only on the embedded database, so simulated
data never reaches a real one.
"""

import asyncio
import subprocess
import sys

from app import json_logger
from app.runner import _today, ensure_dagster_home, run_pipeline
from app.settings import ConfigError, Settings


def run_demo(settings: Settings) -> int:
    """The whole cycle on embedded defaults: simulator, embedded Postgres, seeded stores."""
    from app import stores as store_master
    from app.db import migrate
    from app.db.embedded import start_embedded
    from app.db.engine import create_engine
    from app.portal_sim import PortalSimulator, SimConfig

    if settings.database_url is not None:
        raise ConfigError(
            "demo only runs on the embedded database (simulated data must never reach a real "
            "one): unset DATABASE_URL"
        )
    url = start_embedded(settings.data_dir).database_url()
    migrate.upgrade(url)
    today = _today(settings)
    with PortalSimulator(SimConfig(store_count=6, seed=42, today=today)) as sim:

        async def _seed() -> None:
            engine = create_engine(url)
            try:
                await store_master.upsert_stores(
                    engine,
                    [
                        {**s, "etl_flag": True, "report_flag": True, "is_active": True}
                        for s in sim.stores()
                    ],
                )
            finally:
                await engine.dispose()

        asyncio.run(_seed())
        json_logger.log_event(
            "demo",
            f"simulator serving {len(sim.store_codes)} stores at {sim.web_url}; "
            "running today's partition end to end",
            date=today,
        )
        return run_pipeline(
            settings,
            run_date=today,
            portal_override={
                "web_url": sim.web_url,
                "base_url": sim.base_url,
                "username": sim.username,
                "password": sim.password,
            },
        )


def run_ui(settings: Settings, *, host: str, port: int) -> int:
    """`dagster dev`: webserver and daemon (schedules, sensors, backfills) for local use."""
    home = ensure_dagster_home(settings)
    json_logger.log_event(
        "ui", f"Dagster UI on http://{host}:{port} (DAGSTER_HOME={home})", extras={"port": port}
    )
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-m",
        "crm_assets.definitions",
        "-h",
        host,
        "-p",
        str(port),
    ]
    return subprocess.call(cmd)  # noqa: S603 - fixed argv, no shell
