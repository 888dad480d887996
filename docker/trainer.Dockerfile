# ELSA trainer: torchrun / DDP on GPUs (nccl). torch is installed first and pinned, as in the
# Makefile; on Linux the torch==2.13.0 wheel carries its CUDA libraries.
# Build from the repository root:  docker build -f docker/trainer.Dockerfile -t spatial-audiocaps-trainer .
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY spatial_audiocaps ./spatial_audiocaps
COPY schemas ./schemas
COPY tasks ./tasks
COPY flows ./flows
COPY training ./training
COPY room_specs ./room_specs
COPY prefect.yaml ./prefect.yaml
RUN pip install --no-cache-dir ".[train]"

ENV PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
ENTRYPOINT ["spatial-audiocaps"]
CMD ["train", "--help"]
