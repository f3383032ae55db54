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
    """Resources for every deployment: all settings come from the environment at run time."""
    return {
        "db": DatabaseResource(),
        "portal": PortalResource(),
        "data_dir": DataDirResource(),
        "store_scope": StoreScopeResource(),
        "options": RunOptionsResource(),
        "run_lock": RunDateLockResource(),
    }
