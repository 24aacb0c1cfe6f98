"""Issue 21's acceptance walk over what people look at: no ``file://`` anywhere in Dagster metadata, alert lines or
command output, and the picture links the monitoring and training assets carry. Plain functions over plain values
(metadata as ``{key: value}``, ``MetadataValue``s or not), used by the autopilot soak test and unit-tested on their own."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

FILE_URI = "file://"
MD_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")  # a markdown image: ![alt](url)
# the materializations that carry a picture, and the metadata key it sits under (docs/DESIGN.md, "Pictures")
PICTURES = {"drift_report": "drift_picture", "model_evaluation": "gate_picture", "rollout_decision": "canary_picture"}


def plain(value: Any) -> Any:
    """A Dagster ``MetadataValue`` as its value (a string, a number, a dict from ``json``); anything else as it is."""
    return getattr(value, "value", value) if type(value).__module__.startswith("dagster") else value


def file_uris(where: str, value: Any) -> list[str]:
    """``where.path: text`` for each string inside ``value`` (nested dicts, lists, metadata values) holding a file:// URI."""
    value = plain(value)
    if isinstance(value, str):
        at = value.find(FILE_URI)
        return [] if at < 0 else [f"{where}: …{value[max(0, at - 40):at + 80]}…"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in file_uris(f"{where}.{k}", v)]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in file_uris(f"{where}[{i}]", v)]
    return file_uris(where, str(value)) if FILE_URI in str(value) else []


def metadata_file_uris(materializations: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[str]:
    """Every file:// URI in ``{asset: [metadata of each materialization]}``, named by asset, materialization and key."""
    return [p for asset, mats in materializations.items() for i, md in enumerate(mats) for p in file_uris(f"{asset}[{i}]", dict(md))]


def line_file_uris(where: str, lines: Iterable[str]) -> list[str]:
    """Every file:// URI in text lines (an alert log, command output), parsed as JSON where a line is JSON."""
    out: list[str] = []
    for n, line in enumerate(lines, 1):
        try:
            value: Any = json.loads(line)
        except ValueError:
            value = line
        out += file_uris(f"{where}:{n}", value)
    return out


def picture_urls(metadata: Mapping[str, Any], key: str) -> list[str]:
    """The image URLs of the markdown under ``key`` (``![alt](url)``); none when the key is missing or is not markdown."""
    value = plain(metadata.get(key))
    return MD_IMAGE.findall(value) if isinstance(value, str) else []


def missing_pictures(materializations: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[str]:
    """For each asset of ``PICTURES``: why it does not carry an http picture link (no materialization, none with the
    picture, or one whose picture link is not http)."""
    out = []
    for asset, key in PICTURES.items():
        mats = [dict(md) for md in materializations.get(asset, [])]
        urls = [u for md in mats for u in picture_urls(md, key)]
        if not mats:
            out.append(f"{asset}: no materialization")
        elif not urls:
            out.append(f"{asset}: none of {len(mats)} materializations has a {key} image")
        out += [f"{asset}.{key}: {u} is not http" for u in urls if not u.startswith(("http://", "https://"))]
    return out
