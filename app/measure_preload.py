"""Imported only by the fork server of the audit's measuring processes (`app.measure_worker`).

Every measuring process is a fork of that server, so what is computed here once is inherited
ready by each of them instead of being recomputed per bucket. The Unicode tables of the SQL key
rules (`app.measure._unicode_sets`, a scan of every code point) cost ~0.16 s of CPU each time.
"""

from app.db import engine as _engine  # noqa: F401  (the engine module, SQLAlchemy's asyncpg dialect)
from app.measure import _unicode_sets

_unicode_sets()
