# GPU rephrase worker: vLLM offline batches. vLLM pins its own torch and transformers, so it
# gets an image of its own and never shares one with the trainer.
# Build from the repository root:  docker build -f docker/rephrase.Dockerfile -t spatial-audiocaps-rephrase .
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

# The llm extra pins vllm==0.33.0, which brings its own CUDA torch.
RUN pip install --no-cache-dir ".[llm]"

ENV PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["prefect"]
CMD ["worker", "start", "--pool", "llm-process", "--type", "process"]
