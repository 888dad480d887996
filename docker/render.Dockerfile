# CPU render worker: room sets, RIR bank, audio rendering, shards, Prefect process worker.
# Build from the repository root:  docker build -f docker/render.Dockerfile -t spatial-audiocaps-render .
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY spatial_audiocaps ./spatial_audiocaps
COPY schemas ./schemas
COPY tasks ./tasks
COPY flows ./flows
COPY training ./training
COPY room_specs ./room_specs
COPY prefect.yaml ./prefect.yaml

# No torch here: rendering does not need it. Versions come from pyproject.toml
# (pyroomacoustics==0.10.1 is pinned there).
RUN pip install --no-cache-dir .

ENV PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["prefect"]
CMD ["worker", "start", "--pool", "local-process", "--type", "process"]
