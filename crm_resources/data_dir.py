"""Where raw and merged CSVs live (`DATA_DIR`)."""

from pathlib import Path

import dagster as dg

from app.settings import load_settings


class DataDirResource(dg.ConfigurableResource):
    path: str | None = None

    def root(self) -> Path:
        root = Path(self.path) if self.path else load_settings().data_dir
        root.mkdir(parents=True, exist_ok=True)
        return root.resolve()
