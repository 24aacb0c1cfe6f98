"""Launch asset materializations through the Dagster webserver's GraphQL API, as the UI does."""

from __future__ import annotations

import time
from typing import Any

import requests

LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status }
  }
}
"""

MATERIALIZATIONS = """
query Mat($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        partition
        metadataEntries { label __typename
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
          ... on TextMetadataEntry { text }
          ... on MarkdownMetadataEntry { mdStr }
        }
      }
    }
  }
}
"""


def gql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    r = requests.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60)
    r.raise_for_status()
    body = r.json()
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def launch_assets(
    url: str,
    asset_paths: list[list[str]],
    *,
    location: str = "lakeloop",
    job: str = "__ASSET_JOB",
    partition: str | None = None,
) -> str:
    params: dict[str, Any] = {
        "selector": {
            "repositoryLocationName": location,
            "repositoryName": "__repository__",
            "pipelineName": job,
            "assetSelection": [{"path": p} for p in asset_paths],
        },
        "mode": "default",
        "executionMetadata": {"tags": []},
    }
    if partition is not None:
        params["executionMetadata"]["tags"] = [{"key": "dagster/partition", "value": partition}]
    out = gql(url, LAUNCH, {"executionParams": params})["launchPipelineExecution"]
    if out["__typename"] != "LaunchRunSuccess":
        raise AssertionError(f"launch failed: {out}")
    return out["run"]["runId"]


def wait_for_run(url: str, run_id: str, *, timeout: float = 600.0) -> str:
    deadline = time.monotonic() + timeout
    status = "UNKNOWN"
    while time.monotonic() < deadline:
        status = gql(url, RUN, {"runId": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            return status
        time.sleep(1.0)
    raise AssertionError(f"run {run_id} still {status} after {timeout}s")


def latest_materialization_metadata(url: str, asset_path: list[str]) -> dict[str, Any]:
    data = gql(url, MATERIALIZATIONS, {"key": {"path": asset_path}})["assetOrError"]
    mats = data.get("assetMaterializations") or []
    if not mats:
        return {}
    out: dict[str, Any] = {"__run_id": mats[0]["runId"], "__partition": mats[0]["partition"]}
    for e in mats[0]["metadataEntries"]:
        out[e["label"]] = e.get("intValue", e.get("floatValue", e.get("text", e.get("mdStr"))))
    return out
