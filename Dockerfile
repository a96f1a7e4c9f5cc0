# botyard's production image; docker-compose.yml builds and runs it.
# The builder turns botyard and every dependency, at the versions and hashes of
# requirements.lock, into wheels. The final stage
# installs them without network access and keeps neither the wheels, the source
# tree, nor setuptools: only the installed packages and the bots' code.
# tests/test_deploy.py runs these same commands locally.

FROM python:3.11.14-slim-bookworm AS builder
WORKDIR /src
COPY requirements.lock pyproject.toml README.md LICENSE ./
COPY platform ./platform
# Every dependency at its locked version, each download checked against the lock's
# hashes (./scripts/lock regenerates requirements.lock); then botyard itself.
RUN python -m pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements.lock \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .
COPY requirements.lock /wheels/

FROM python:3.11.14-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app
# The wheels are mounted from the builder for this step only, so no layer keeps
# them; the dependencies install by the lock's hashes, botyard from its own wheel.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels \
        --require-hashes -r /wheels/requirements.lock \
    && python -m pip install --no-cache-dir --no-index --no-deps --find-links /wheels botyard \
    && python -m pip uninstall --yes setuptools wheel \
    && groupadd --system --gid 10001 botyard \
    && useradd --system --uid 10001 --gid botyard --no-create-home --shell /usr/sbin/nologin botyard
WORKDIR /app
# Root owns the code; the botyard user can read it, not change it.
COPY bots ./bots
COPY migrations ./migrations
COPY botyard.yaml ./
USER 10001:10001
# botyard drains in-flight updates on SIGTERM (up to --shutdown-timeout, 25 s).
# No HEALTHCHECK: where /healthz listens depends on the registry (ops.listen or
# webhook.listen), so docker-compose.yml is the place to add one.
STOPSIGNAL SIGTERM
ENTRYPOINT ["botyard"]
CMD ["run", "/app/botyard.yaml"]
