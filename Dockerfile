# ovms-bench: the OVMS benchmark client's command line on Locust, as the client's image is used:
#
#   docker build -t ovms-bench .
#   docker run --rm --network host ovms-bench -a HOST -r 8000 -p 9000 -m resnet -n 8 --print_all
#
# The container's exit code is ovms-bench's (exec-form ENTRYPOINT, no shell in between).
# Not built on the development machines (no Docker engine there): tests/test_docker.py lints this
# file with hadolint and replays every step but the user's creation in a fresh venv. Keep each RUN
# one pip command (or the useradd one) so that replay can follow it. See README.md, "Docker".

# The Python the suite is developed and tested on (3.11); the Debian release pinned too, so that a
# rebuild does not move to another libc. Add @sha256:... for a bit-for-bit pin.
FROM python:3.11-slim-trixie

LABEL org.opencontainers.image.title="ovms-bench" \
      org.opencontainers.image.description="Benchmark ML model servers (OVMS, TF Serving, KServe v2) on Locust: a drop-in replacement of the OVMS benchmark client" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-trixie"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# The user the client runs as, and /results (its working directory) where the JSON result goes by default.
RUN useradd --no-log-init --create-home --uid 10001 --user-group bench \
    && install -d -o bench -g bench /results

WORKDIR /app

# The pinned dependencies first: their layer stays cached while only the sources change.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The package itself, without dependencies (all pinned above). README.md is the package's readme.
COPY pyproject.toml README.md ./
COPY ovms_wire/ ovms_wire/
COPY refserver/ refserver/
COPY ovms_users/ ovms_users/
COPY metrics_ext/ metrics_ext/
COPY ovms_bench/ ovms_bench/
RUN pip install --no-cache-dir --no-deps .

# Locust's own command line with the suite's locustfile:
#   docker run --entrypoint locust -p 8089:8089 ovms-bench -f /app/locustfiles/ovms.py
COPY locustfiles/ locustfiles/

# numeric, so that a runtime (Kubernetes' runAsNonRoot) can see it is not root
USER 10001:10001
WORKDIR /results

# Locust's web UI, optional: `docker run -p 8089:8089 ovms-bench ... --web 0.0.0.0:8089`, or the locust entrypoint above
EXPOSE 8089

ENTRYPOINT ["ovms-bench"]
CMD ["--help"]
