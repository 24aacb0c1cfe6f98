"""Load a registered version only if lakeloop registered it, and only the files it registered.

Whoever can write to MLflow can replace a version's files or register a version of their own, and loading a pyfunc runs
its code. So a version is loaded (``load_trusted``) only when

1. the promotion ledger has a registration entry for it (``trainers.registry.record_registration``: a run that passed
   the gate, or an operator's recorded override), and
2. the SHA-256 of the files just downloaded (``trainers.registry.artifact_digest``) is the one that entry recorded.

The check runs on the downloaded copy and the model loads from that same copy, so nothing can change between the two.
Otherwise ``UntrustedModelError`` names the version and why; the scoring service keeps serving what it had and
alerts (``monitors.serve.ModelPool``). Versions registered before lakeloop recorded digests are refused the same way:
retrain them (or, knowing what they hold, record them by hand with ``record_registration``).
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.errors import ServiceError
from infra.settings import Settings

RETRAIN = "retrain and register it through the gate (`lakeloop train`, `lakeloop register-model`); an operator who knows what it holds can record it with trainers.registry.record_registration(..., gate='override')"


class UntrustedModelError(ServiceError):
    """A registered version that the promotion ledger does not vouch for, or whose files changed since it did."""

    def __init__(self, message: str, *, version: str = "", reason: str = "", hint: str | None = RETRAIN) -> None:
        super().__init__(message, hint=hint)
        self.version, self.reason = version, reason


@dataclass(frozen=True)
class Verdict:
    """What the check found (pure: ``verdict``)."""

    trusted: bool
    reason: str  # "ok" | "unregistered" | "digest mismatch"
    message: str


def verdict(name: str, version: str, *, recorded: str | None, actual: str) -> Verdict:
    """Trust ``version`` iff the ledger ``recorded`` a digest for it and the files' ``actual`` digest is that one."""
    if not recorded:
        return Verdict(False, "unregistered", f"{name} v{version} is not in the promotion ledger: no gate-passed registration or "
                                              "operator override recorded it, so it is not loaded")
    if recorded != actual:
        return Verdict(False, "digest mismatch", f"{name} v{version}'s files changed since it was registered: the ledger recorded "
                                                 f"sha256 {recorded[:16]}..., the downloaded files give {actual[:16]}...; not loaded")
    return Verdict(True, "ok", f"{name} v{version}: sha256 {actual[:16]}... as registered")


def verify_folder(settings: Settings, version: str, folder: Path) -> Verdict:
    """The verdict for a version's downloaded ``folder``; raises ``UntrustedModelError`` when it is not trusted."""
    from trainers import registry

    name = settings.registered_model_name
    known = registry.registration(settings, version)
    v = verdict(name, str(version), recorded=known.digest if known else None, actual=registry.artifact_digest(folder))
    if not v.trusted:
        raise UntrustedModelError(v.message, version=str(version), reason=v.reason)
    return v


def load_trusted(settings: Settings, version: str) -> Any:
    """The version as an MLflow pyfunc, loaded from a copy whose digest the ledger vouches for (see the module doc)."""
    import mlflow.pyfunc

    from trainers import registry
    from trainers.pyfunc import SERVING_MODULES

    with tempfile.TemporaryDirectory(prefix=f"lakeloop-v{version}-") as tmp:
        folder = registry.download_version(settings, str(version), Path(tmp))
        verify_folder(settings, str(version), folder)
        # In a lakeloop process the installed packages serve the model: imported first, so that the model's code/
        # copy (which MLflow puts first on sys.path, for a process without lakeloop) neither shadows a package not yet
        # imported nor stays on the path after its temporary folder is gone.
        for package in sorted({m.split("/", 1)[0] for m in SERVING_MODULES}):
            importlib.import_module(package)
        saved = list(sys.path)
        try:
            return mlflow.pyfunc.load_model(str(folder))
        finally:
            sys.path[:] = saved
