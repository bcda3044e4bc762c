# syntax=docker/dockerfile:1
# The jobs platform's one image. Every role is `jobs ROLE`:
#   docker run IMAGE worker [-Q queues] [-c N] [-P prefork|threads|solo] [-n name]
#   docker run IMAGE beat | flower | db upgrade
# docker-compose.yml runs it; docs/deploy.md explains the choices.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---- build: the locked environment, compiled to bytecode, in /app/.venv ----------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON_PREFERENCE=only-system \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, in their own layer: rebuilt only when uv.lock changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --locked --no-dev --no-install-project
# Then the project, installed as a wheel (not editable): the runtime needs no source tree.
COPY . /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable

# ---- runtime: the interpreter, the environment, a non-root user; no uv, pip or caches -------
FROM ${PYTHON_IMAGE} AS runtime
RUN python -m pip uninstall --yes --quiet pip \
    && groupadd --system --gid 10001 jobs \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /var/lib/jobs --shell /usr/sbin/nologin jobs \
    && install --directory --owner=10001 --group=10001 --mode=0750 /var/lib/jobs
COPY --from=build /app/.venv /app/.venv
# REMAP_SIGTERM=SIGQUIT: on SIGTERM (docker stop, Kubernetes) a Celery worker does its soft
# shutdown (running jobs get JOBS_WORKER_SOFT_SHUTDOWN_TIMEOUT seconds, then are handed back)
# instead of a warm shutdown that waits for every running job, up to its hard time limit.
ENV PATH=/app/.venv/bin:$PATH
ENV PYTHONDONTWRITEBYTECODE=1
ENV PYTHONUNBUFFERED=1
ENV REMAP_SIGTERM=SIGQUIT
# Writable by the app user: Flower keeps flower.db here (a volume in docker-compose.yml).
WORKDIR /var/lib/jobs
USER 10001:10001
# Suits the default command (a worker on this container's host name); docker-compose.yml
# sets the check of every other role (jobs health beat | flower, or none for db upgrade).
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["jobs", "health", "worker"]
# exec form: `jobs` is PID 1's child under --init, or PID 1 itself, and exec's Celery in its
# place, so signals reach Celery directly.
ENTRYPOINT ["jobs"]
CMD ["worker"]
