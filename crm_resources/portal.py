"""The store portal's location and login as a Dagster resource.

Unset fields fall back to `TMS_WEB`, `TMS_BASE`, `TMS_USERNAME`, `TMS_PASSWORD` (environment,
then `.env`), read at run time: that is how the deployment, `demo` and `ui` hand over the login,
so no password is ever part of a run's config (Dagster stores and shows run config). Nothing here
defaults to the built-in simulator: only `python -m app demo` and `ui` point the environment at
it (marked `CRM_PORTAL_SIMULATED=1`), and a run refuses that marker next to a real database, so
simulated data can never reach one by accident.
"""

import dagster as dg

from app.downloader import PortalCredentials
from app.local import SIMULATED_PORTAL_ENV, portal_is_simulated
from app.settings import ConfigError, load_settings


class PortalResource(dg.ConfigurableResource):
    web_url: str | None = None
    base_url: str | None = None
    username: str | None = None
    password: str | None = None
    concurrency: int | None = None
    rate_per_s: float | None = None
    timeout_s: float | None = None

    def missing(self) -> list[str]:
        settings = load_settings()
        missing = []
        for field, env in (
            ("web_url", "tms_web"),
            ("base_url", "tms_base"),
            ("username", "tms_username"),
            ("password", "tms_password"),
        ):
            if not getattr(self, field) and env.upper() in settings.missing_portal_settings():
                missing.append(env.upper())
        return missing

    def credentials(self) -> PortalCredentials:
        """The login to use; raises ConfigError naming every missing setting."""
        if missing := self.missing():
            raise ConfigError(f"portal settings missing: {', '.join(missing)}")
        settings = load_settings()
        if portal_is_simulated() and settings.database_url is not None:
            raise ConfigError(
                f"{SIMULATED_PORTAL_ENV} is set (the portal is the built-in simulator) but "
                "DATABASE_URL names a real database: simulated data never goes there; unset one"
            )
        password = self.password or (
            settings.tms_password.get_secret_value() if settings.tms_password else ""
        )
        return PortalCredentials(
            web_url=(self.web_url or settings.tms_web or "").rstrip("/"),
            base_url=(self.base_url or settings.tms_base or "").rstrip("/"),
            username=self.username or settings.tms_username or "",
            password=password,
        )

    def limits(self) -> dict[str, float]:
        settings = load_settings()
        return {
            "concurrency": self.concurrency or settings.download_concurrency,
            "rate_per_s": self.rate_per_s or settings.download_rate_per_s,
            "timeout_s": self.timeout_s or settings.download_timeout_s,
        }
