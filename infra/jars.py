"""JVM parts from Maven Central: the Kafka broker, delta-spark and spark-sql-kafka, and Spark's s3a filesystem.

``fetch_jars`` runs ``mvn dependency:copy-dependencies`` on the poms in ``infra/maven`` into
``<jars_dir>/<bundle>``; a marker file records what was fetched, so a second call is a no-op. Maven runs with
``--strict-checksums``: an artifact whose checksum from Maven Central does not match fails the fetch.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from infra.errors import MissingDependencyError
from infra.settings import Settings

MAVEN_DIR = Path(__file__).resolve().parent / "maven"


@dataclass(frozen=True)
class JarBundle:
    name: str
    pom: Path
    properties: dict[str, str]

    @property
    def fingerprint(self) -> str:
        """What was asked for: the pom's content (not its mtime: every clone would refetch) and the properties."""
        props = ",".join(f"{k}={v}" for k, v in sorted(self.properties.items()))
        return f"{self.pom.name}:{hashlib.sha256(self.pom.read_bytes()).hexdigest()[:16]}:{props}"


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        raise MissingDependencyError(
            f"the Python package {dist!r} is not installed", hint="run `pip install -e .` in the repo"
        ) from None


def bundled_hadoop_version() -> str:
    """The Hadoop version the pyspark wheel ships (``pyspark/jars/hadoop-client-api-<version>.jar``): hadoop-aws must
    be the same release."""
    _installed("pyspark")
    import pyspark

    jars = sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    if not jars:
        raise MissingDependencyError("the pyspark wheel ships no hadoop-client-api jar", hint="reinstall pyspark: pip install -e .")
    return jars[-1].name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def bundles() -> list[JarBundle]:
    return [
        JarBundle("kafka", MAVEN_DIR / "kafka-pom.xml", {}),
        JarBundle(
            "spark",
            MAVEN_DIR / "spark-pom.xml",
            {"delta.version": _installed("delta-spark"), "pyspark": _installed("pyspark")},
        ),
        # s3a for an s3:// lake on the Spark engine (infra/spark.py adds these jars only then): 15 MB
        JarBundle("s3a", MAVEN_DIR / "s3a-pom.xml", {"hadoop.version": bundled_hadoop_version()}),
    ]


def bundle_dir(settings: Settings, name: str) -> Path:
    return settings.jars / name


def is_fetched(settings: Settings, bundle: JarBundle) -> bool:
    marker = bundle_dir(settings, bundle.name) / ".fetched"
    return marker.exists() and marker.read_text() == bundle.fingerprint


def require_jars(settings: Settings, name: str) -> Path:
    """The folder of a fetched bundle, or a MissingDependencyError that says how to fetch it."""
    d = bundle_dir(settings, name)
    if not (d / ".fetched").exists() or not any(d.glob("*.jar")):
        raise MissingDependencyError(
            f"the {name} jars are not in {d}", hint="run `lakeloop infra fetch` (needs Maven and the network to Maven Central)"
        )
    return d


def fetch_jars(settings: Settings, *, force: bool = False, quiet: bool = True) -> list[tuple[str, Path, bool]]:
    """Fetch every bundle that is missing or stale. Returns (name, folder, fetched_now) per bundle."""
    out: list[tuple[str, Path, bool]] = []
    for bundle in bundles():
        target = bundle_dir(settings, bundle.name)
        if not force and is_fetched(settings, bundle):
            out.append((bundle.name, target, False))
            continue
        mvn = shutil.which("mvn")
        if mvn is None:
            raise MissingDependencyError("Maven (`mvn`) is not on PATH", hint="install it: apt-get install maven")
        # Fetch beside the target and swap it in by renames: a broker or Spark session started from the
        # old folder, or another fetch running at the same time, never sees a half-filled one.
        staging = target.with_name(f".{bundle.name}.fetching-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        # --strict-checksums: a download whose .sha1 does not match fails the fetch (Maven's default only warns)
        cmd = [mvn, "-B", "--strict-checksums", "-s", str(MAVEN_DIR / "settings.xml"), "-f", str(bundle.pom),
               "dependency:copy-dependencies", f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
        if quiet:
            cmd.insert(1, "-q")
        cmd += [f"-D{k}={v}" for k, v in bundle.properties.items()]
        proc = subprocess.run(cmd, capture_output=quiet, text=True)
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            tail = (proc.stdout or "")[-2000:] + (proc.stderr or "")[-2000:] if quiet else ""
            raise MissingDependencyError(
                f"mvn could not fetch the {bundle.name} jars (exit {proc.returncode}). {tail.strip()}",
                hint="check the network to Maven Central, then run `lakeloop infra fetch --force`",
            )
        (staging / ".fetched").write_text(bundle.fingerprint)
        _swap_in(staging, target)
        out.append((bundle.name, target, True))
    return out


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` with renames (the old folder is removed after the swap)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    try:
        target.rename(old)
    except FileNotFoundError:
        pass
    try:
        staging.rename(target)
    except OSError:  # another fetch put its folder there in between: same content, keep it
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
