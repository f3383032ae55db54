"""The code location: `crm_assets.definitions:defs`."""

import dagster as dg

defs = dg.Definitions(assets=[])
