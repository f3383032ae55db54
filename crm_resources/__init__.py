"""Dagster resources wrapping the `app` pieces: database, portal, data folder, store scope."""

from crm_resources.data_dir import DataDirResource
from crm_resources.database import DatabaseResource
from crm_resources.options import RunOptionsResource
from crm_resources.portal import PortalResource
from crm_resources.run_lock import RunDateLockResource
from crm_resources.store_scope import StoreScopeResource

__all__ = [
    "DataDirResource",
    "DatabaseResource",
    "PortalResource",
    "RunDateLockResource",
    "RunOptionsResource",
    "StoreScopeResource",
    "default_resources",
]


def default_resources() -> dict[str, object]:
    """Resources for every deployment; each reads `app.settings.load_settings()` at run time.

    Why not `dg.EnvVar("DATABASE_URL")` and friends here: in Dagster 1.13 an `EnvVar` is a
    `{"env": NAME}` config source resolved when the run starts, and an unset variable fails the
    run ("You have attempted to fetch the environment variable ... which is not set"). That
    would break the embedded-Postgres default (no `DATABASE_URL`) and the portal's "missing
    settings" message, and an `EnvVar` reads `os.environ` only, never `.env`, which the CLI's
    in-process runs rely on. Every setting here is optional, so none is an `EnvVar`; instead
    the fields stay unset and the resources fall back to the one settings path (environment,
    then `.env`), the same one the sensor and the CLI use. Secrets therefore never appear in
    run config either: the UI shows the fields as unset, and the values stay in the process
    environment. (A field set explicitly, e.g. by a test, still wins.)
    """
    return {
        "db": DatabaseResource(),
        "portal": PortalResource(),
        "data_dir": DataDirResource(),
        "store_scope": StoreScopeResource(),
        "options": RunOptionsResource(),
        "run_lock": RunDateLockResource(),
    }
