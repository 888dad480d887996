"""A Kubeflow PyTorchJob manifest for multi-node ELSA training (plus the ConfigMap it reads).

The training operator starts one Master and ``nnodes - 1`` Worker pods and sets PET_NNODES,
PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which torchrun reads, so
every pod runs the same command: ``torchrun -m training.train --config /etc/elsa/train.yaml``.
Shards are read from S3 with the standard AWS environment (endpoint, and credentials from a
Secret, never inlined); checkpoints go to a ReadWriteMany volume that every pod mounts.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from training.config import TrainConfig


class PyTorchJobSpec(BaseModel):
    """Everything the manifest needs besides the TrainConfig."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")
    namespace: str = "default"
    image: str
    nnodes: int = Field(2, ge=1)
    nproc_per_node: int = Field(8, ge=1)
    gpus_per_node: int = Field(8, ge=0)
    cpu: str = "64"
    memory: str = "512Gi"
    shm_size: str = Field("64Gi", description="/dev/shm for DataLoader workers")
    aws_endpoint_url: str | None = None
    aws_secret: str | None = Field(
        "elsa-s3", description="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )
    runs_pvc: str = Field("elsa-runs", description="ReadWriteMany claim holding run_dir")
    runs_mount: str = "/runs"
    module: str = "training.train"
    node_selector: dict[str, str] = Field(default_factory=dict)


def _container(spec: PyTorchJobSpec) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": "TOKENIZERS_PARALLELISM", "value": "false"}]
    if spec.aws_endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": spec.aws_endpoint_url})
    limits: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = spec.gpus_per_node
    c: dict[str, Any] = {
        "name": "pytorch",  # the operator looks for this container name
        "image": spec.image,
        "command": ["torchrun", "-m", spec.module, "--config", "/etc/elsa/train.yaml"],
        "env": env,
        "resources": {"limits": limits, "requests": dict(limits)},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/elsa", "readOnly": True},
            {"name": "runs", "mountPath": spec.runs_mount},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    if spec.aws_secret:
        c["envFrom"] = [{"secretRef": {"name": spec.aws_secret}}]
    return c


def _replica(spec: PyTorchJobSpec, replicas: int) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [_container(spec)],
        "volumes": [
            {"name": "config", "configMap": {"name": f"{spec.name}-config"}},
            {"name": "runs", "persistentVolumeClaim": {"claimName": spec.runs_pvc}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
        ],
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    return {"replicas": replicas, "restartPolicy": "OnFailure", "template": {"spec": pod}}


def render_manifests(spec: PyTorchJobSpec, cfg: TrainConfig) -> list[dict[str, Any]]:
    """[ConfigMap with train.yaml, PyTorchJob]. ``cfg.run_dir`` should lie under ``spec.runs_mount``."""
    if not cfg.run_dir.startswith(spec.runs_mount.rstrip("/") + "/"):
        raise ValueError(f"run_dir {cfg.run_dir} is not on the shared volume {spec.runs_mount}")
    labels = {"app.kubernetes.io/name": "elsa-train", "app.kubernetes.io/instance": spec.name}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{spec.name}-config", "namespace": spec.namespace, "labels": labels},
        "data": {"train.yaml": yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)},
    }
    replicas = {"Master": _replica(spec, 1)}
    if spec.nnodes > 1:
        replicas["Worker"] = _replica(spec, spec.nnodes - 1)
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "nprocPerNode": str(spec.nproc_per_node),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
            "pytorchReplicaSpecs": replicas,
        },
    }
    return [config_map, job]


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the embedded train.yaml) as literal blocks, so the manifest stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_yaml(spec: PyTorchJobSpec, cfg: TrainConfig) -> str:
    """The manifests as one multi-document YAML (``kubectl apply -f``)."""
    return yaml.dump_all(render_manifests(spec, cfg), Dumper=_Dumper, sort_keys=False)
