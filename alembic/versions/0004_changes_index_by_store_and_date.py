"""change tables: index by (store_code, run_date) instead of run_date alone

Revision ID: 0004
Revises: 0003

Why: the load reaches a key's history through the (keys..., run_date) index, and the reports and
the `gone` step read one store's rows of a date range. A `run_date`-only index serves neither,
costs every history insert, and - with no statistics yet during a first load - made the planner
scan all of a date's history once per batch (a load that grew with the square of its size).
"""

from collections.abc import Sequence

from alembic import op


revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The change tables as of revision 0003 (a later bucket's migration creates its own table).
TABLES = ("missed_leads_changes", "undelivered_orders_changes", "repeat_customers_changes")


def upgrade() -> None:
    for table in TABLES:
        op.drop_index(op.f(f"ix_{table}_run_date"), table_name=table)
        op.create_index(op.f(f"ix_{table}_store_code_run_date"), table, ["store_code", "run_date"])


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(op.f(f"ix_{table}_store_code_run_date"), table_name=table)
        op.create_index(op.f(f"ix_{table}_run_date"), table, ["run_date"])
