"""Database layer: ORM models, engines and URLs, the embedded Postgres, migrations."""
