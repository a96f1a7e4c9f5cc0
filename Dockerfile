# botyard's production image; docker-compose.yml builds and runs it.
# The builder turns botyard and every dependency into wheels. The final stage
# installs them without network access and keeps neither the wheels, the source
# tree, nor setuptools: only the installed packages and the bots' code.
# tests/test_deploy.py runs these same commands locally.

FROM python:3.11-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform ./platform
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app
# The wheels are mounted from the builder for this step only, so no layer keeps
# them; they are exactly what the builder resolved, hence no version pins here.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels botyard \
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
