"""Per-run switches an operator sets from the CLI or the launchpad."""

import dagster as dg


class RunOptionsResource(dg.ConfigurableResource):
    """`dry_run`: download and merge, but write nothing to the database and delete nothing."""

    dry_run: bool = False
