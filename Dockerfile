# One image for every sopflow process: `sopflow worker` (the default), `sopflow intake`, `sopflow codec-server`,
# `sopflow db upgrade`. Build: docker build -t sopflow .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SOPFLOW_HOME=/var/lib/sopflow

RUN groupadd --system --gid 10001 sopflow \
    && useradd --system --uid 10001 --gid sopflow --home-dir /var/lib/sopflow --shell /usr/sbin/nologin sopflow \
    && mkdir -p /var/lib/sopflow \
    && chown sopflow:sopflow /var/lib/sopflow

# The cairo library draws `sopflow forecast --chart F.png` (cairosvg loads it); nothing else needs a system package.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcairo2 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, exactly as locked (every package with its hash): a code change does not reinstall them.
COPY pyproject.toml requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# The code with its templates and playbooks beside it (sopflow finds them relative to the package), installed in
# place so the `sopflow` command runs this tree.
COPY README.md worker.py ./
COPY sopflow ./sopflow
COPY workflows ./workflows
COPY activities ./activities
COPY starter ./starter
COPY templates ./templates
COPY playbooks ./playbooks
RUN pip install --no-deps --no-build-isolation -e . && python -m compileall -q sopflow workflows activities starter worker.py

USER sopflow:sopflow
ENTRYPOINT ["sopflow"]
CMD ["worker"]
