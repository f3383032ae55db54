"""The portal downloader: login, sign-on hop, per-store dashboards and CSVs (see PORTAL.md)."""

from app.downloader.client import (
    LoginError,
    PortalCredentials,
    PortalError,
    PortalUnavailableError,
)
from app.downloader.core import (
    BucketDownload,
    DownloadReport,
    download_reports,
    download_reports_sync,
)

__all__ = [
    "BucketDownload",
    "DownloadReport",
    "LoginError",
    "PortalCredentials",
    "PortalError",
    "PortalUnavailableError",
    "download_reports",
    "download_reports_sync",
]
