# GPU worker: sandvisor on PyTorch's official CUDA runtime image.
# The worker's venv is created with --system-site-packages on the image's own Python, so the
# image's torch (and CUDA libraries) sit in the supervisor's base environment, which every
# job's env is layered on: jobs import torch without installing it.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv

ENV UV_PROJECT_ENVIRONMENT=/opt/sandvisor \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PATH=/opt/sandvisor/bin:$PATH \
    SANDVISOR_ALLOW_SYSTEM_DEPENDENCIES=true

# A request's system_dependencies are installed with apt-get, as worker-flash does (the worker
# runs as root in its container); SANDVISOR_ALLOW_SYSTEM_DEPENDENCIES=false turns that off.

# Not /app: that is where a deployed Flash app lives (SANDVISOR_APP_DIR).
WORKDIR /opt/sandvisor-src
COPY pyproject.toml uv.lock README.md ./
RUN uv venv --system-site-packages --python "$(command -v python3)" /opt/sandvisor \
 && uv sync --locked --no-dev --no-install-project
COPY src ./src
RUN uv sync --locked --no-dev --no-editable --compile-bytecode

# Job identities (README, "Privilege model"): the worker runs as root and runs each job as one
# of 64 unprivileged users (uids 20000-20063, SANDVISOR_JOB_UIDS) of one group (gid 20000,
# SANDVISOR_JOB_GID), without login, home or sudo. The store without a volume is
# /var/lib/sandvisor: root's, passable by jobs; each job's dirs are made its own at its start;
# the shared Hugging Face cache is the jobs' group's (setgid, group-writable). The runtime
# (/opt/sandvisor), the app dir and the sources stay root's and read-only for jobs. Env
# interpreters (templates) run in a user namespace as uid 19999 (SANDVISOR_TEMPLATE_UID), which
# owns only the jobs' dir (the supervisor chowns it at start); the runtime is compiled above, as
# they cannot write its __pycache__.
RUN groupadd --gid 19999 sandvisor-templates \
 && useradd --uid 19999 --gid 19999 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin sv-template \
 && groupadd --gid 20000 sandvisor-jobs \
 && for uid in $(seq 20000 20063); do \
      useradd --uid "$uid" --gid 20000 --no-create-home --home-dir /nonexistent \
              --shell /usr/sbin/nologin "sv-job-$uid"; \
    done \
 && install -d -o root -g root -m 0755 /var/lib/sandvisor \
 && install -d -o root -g root -m 0711 /var/lib/sandvisor/jobs /var/lib/sandvisor/private \
 && install -d -o root -g 20000 -m 2775 /var/lib/sandvisor/huggingface \
 && chmod -R go-w /opt/sandvisor /opt/sandvisor-src

# Queue worker by default; FLASH_ENDPOINT_TYPE=lb (set by runpod-flash on load-balanced
# endpoints) serves HTTP on $PORT (80) instead.
EXPOSE 80
CMD ["sandvisor", "serve"]
