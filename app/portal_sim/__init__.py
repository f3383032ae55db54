"""A simulated store portal ("TMS") for tests, the demo and benchmarks; see PORTAL.md."""

from app.portal_sim.config import SimConfig
from app.portal_sim.server import PortalSimulator

__all__ = ["PortalSimulator", "SimConfig"]
