"""The portal downloader: login, sign-on hop, per-store dashboards and CSVs (see PORTAL.md)."""

from app.downloader.client import (
    LoginError,
    PortalCredentials,
    PortalError,
    PortalUnavailableError,
)
from app.downloader.core import (
    BucketDownload,
    Clock,
    DownloadReport,
    Verify,
    download_reports,
    download_reports_sync,
    franchise_today,
)

__all__ = [
    "BucketDownload",
    "Clock",
    "DownloadReport",
    "LoginError",
    "PortalCredentials",
    "PortalError",
    "PortalUnavailableError",
    "Verify",
    "download_reports",
    "download_reports_sync",
    "franchise_today",
]
