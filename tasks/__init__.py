"""The pipeline stages: pure domain functions, each stage with a thin Prefect wrapper."""
