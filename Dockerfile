# One image for the CRM app (`python -m app ...`), the Dagster webserver and the Dagster daemon.
#
#   docker compose build app
#   docker compose run --rm app python -m app run            # a whole day, in-process
#   docker compose up -d dagster-webserver dagster-daemon    # UI on 127.0.0.1:3000 of the server
#
# Stage 1 builds a virtualenv from wheels only (no compiler anywhere); stage 2 is a clean slim
# image that receives that virtualenv and the source, and runs as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

# (bytecode is written on purpose: the venv ships compiled, so containers start faster)
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the dependency
# list changes, not on every source edit. `--only-binary :all:` guarantees nothing is compiled.
# pgserver (the embedded PostgreSQL for laptops and tests) is left out: in Docker DATABASE_URL
# always points at the `db` service, and pgserver has no Linux arm64 wheel.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; keep = [d for d in deps if not d.startswith('pgserver')]; open('requirements.txt', 'w').write('\n'.join(keep) + '\n')" \
 && pip install --no-cache-dir --only-binary :all: -r requirements.txt \
 && pip check

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="crm-platform" \
      org.opencontainers.image.description="CRM data platform: app CLI, Dagster webserver and daemon"

# DAGSTER_HOME holds the deployment's dagster.yaml (Postgres storage, queued runs); its
# `storage` subfolder (compute logs, asset outputs) is a volume shared by webserver and daemon.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/opt/crm \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    DATA_DIR=/data

RUN groupadd --system --gid 10001 crm \
 && useradd --system --uid 10001 --gid crm --home-dir /opt/crm --no-create-home \
            --shell /usr/sbin/nologin crm \
 && mkdir -p /opt/crm /data "$DAGSTER_HOME/storage" \
 && chown crm:crm /data "$DAGSTER_HOME" "$DAGSTER_HOME/storage"

COPY --from=build /opt/venv /opt/venv
# root-owned and read-only for the app user: the instance config is part of the image
COPY dagster.yaml $DAGSTER_HOME/dagster.yaml

# The source last: an edit to the code rebuilds only the layers from here on. The app runs from
# /opt/crm (PYTHONPATH), where alembic.ini and alembic/ sit next to the packages as in the repo.
WORKDIR /opt/crm
COPY alembic.ini workspace.yaml pyproject.toml ./
COPY alembic ./alembic
COPY app ./app
COPY crm_resources ./crm_resources
COPY crm_assets ./crm_assets
RUN python -m compileall -q /opt/crm

USER 10001:10001

EXPOSE 3000

# No ENTRYPOINT: whatever follows the service name in `docker compose run --rm app ...` is the
# command. The default does nothing to data: it prints the CLI's help.
CMD ["python", "-m", "app", "--help"]
