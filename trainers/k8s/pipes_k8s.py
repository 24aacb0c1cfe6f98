"""Run the same trainer entry point as a GPU pod through dagster-k8s's ``PipesK8sClient``.

Not used here (no cluster); see README.md beside this file. Install with ``pip install 'lakeloop[k8s]'``.
Swap it in for ``pipes_subprocess_client`` in ``orchestration/definitions.py`` on a cluster deployment;
``reward_model`` then launches the pod instead of a local subprocess, with the same logs/metrics via Pipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPEC = Path(__file__).with_name("trainer-pod.yaml")


def k8s_pipes_client() -> Any:
    """The Pipes client for Kubernetes; a clear error if dagster-k8s is not installed."""
    try:
        from dagster_k8s import PipesK8sClient
    except ImportError as exc:
        from infra.errors import MissingDependencyError

        raise MissingDependencyError("dagster-k8s is not installed", hint="pip install 'lakeloop[k8s]'") from exc
    return PipesK8sClient()


def pod_spec_config() -> dict[str, Any]:
    """``base_pod_spec`` for ``PipesK8sClient.run(...)``: the GPU container of trainer-pod.yaml."""
    import yaml  # pyyaml comes with dagster

    return yaml.safe_load(SPEC.read_text())["spec"]
