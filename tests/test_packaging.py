"""The wheel holds the data files the code reads next to itself (Path(__file__)...), and the license metadata.

Builds the wheel from a copy of the tracked sources (so no build/ or egg-info is left in the repo) with the running
interpreter's setuptools (no build isolation): fast, no network.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

DATA_FILES = [
    "feedback/event_schema_v1.json",  # feedback.events.SCHEMA_PATH
    "feedback/collector/static/example.html",  # feedback.collector.example.PAGE_PATH
    "infra/kafka-log4j2.properties",  # infra.services (the broker's log4j2 configuration)
    "infra/maven/kafka-pom.xml",  # infra.jars.MAVEN_DIR
    "infra/maven/spark-pom.xml",
    "infra/maven/s3a-pom.xml",
    "infra/maven/settings.xml",
    "trainers/k8s/trainer-pod.yaml",  # trainers.k8s.pipes_k8s.SPEC
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if rel.startswith(("tests/", "docs/", "bench/", ".ci/")) or not (REPO_ROOT / rel).is_file():
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (whl,) = out.glob("lakeloop-*.whl")
    return zipfile.ZipFile(whl)


def test_every_data_file_read_via_file_is_in_the_wheel(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    missing = [f for f in DATA_FILES if f not in names]
    assert not missing, f"not in the wheel: {missing} (add them to [tool.setuptools.package-data])"
    for f in DATA_FILES:
        assert wheel.read(f) == (REPO_ROOT / f).read_bytes(), f


def test_data_files_list_covers_the_tracked_non_python_files() -> None:
    """A new file beside the code (not tests/docs/bench) must be added to DATA_FILES and package-data."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    packages = ("infra/", "feedback/", "features/", "trainers/", "monitors/", "orchestration/")
    beside_code = {f for f in tracked.split() if f.startswith(packages) and not f.endswith((".py", ".md"))}
    assert beside_code == set(DATA_FILES)


def test_wheel_license_metadata(wheel: zipfile.ZipFile) -> None:
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    headers = wheel.read(meta).decode().split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers
    assert "License-File: LICENSE" in headers
    (lic,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel.read(lic) == (REPO_ROOT / "LICENSE").read_bytes()


def test_wheel_has_the_cli_and_no_tests(wheel: zipfile.ZipFile) -> None:
    (ep,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "lakeloop = orchestration.cli:main" in wheel.read(ep).decode()
    assert not [n for n in wheel.namelist() if n.startswith(("tests/", "bench/", "docs/"))]
