"""Pytest fixtures for the portal simulator (owned by the downloader/simulator work)."""
