"""Supply chain: Maven fetches verify checksums strictly; the CI audit's outcomes (finding, ignored, unreachable);
the lock covers the extras the setup installs. Fast: no network, no Maven run."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from infra import jars
from infra.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_fetch_jars_runs_maven_with_strict_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(jars.shutil, "which", lambda name: "/usr/bin/mvn")
    monkeypatch.setattr(jars.subprocess, "run", fake_run)
    settings = load_settings(home=tmp_path / "home", jars_dir=tmp_path / "jars", autopilot=False)
    fetched = jars.fetch_jars(settings, force=True)
    assert [name for name, _, now in fetched if now] == ["kafka", "spark", "s3a"]
    assert len(calls) == 3
    for cmd in calls:
        assert cmd[0] == "/usr/bin/mvn"
        assert "--strict-checksums" in cmd or "-C" in cmd, cmd
        assert cmd[cmd.index("-s") + 1] == str(jars.MAVEN_DIR / "settings.xml")


def _audit_module():
    spec = importlib.util.spec_from_file_location("ci_audit", REPO_ROOT / ".ci" / "audit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report(*deps: dict) -> dict:
    return {"dependencies": list(deps), "fixes": []}


VULN = {"id": "PYSEC-2099-1", "aliases": ["CVE-2099-1", "GHSA-xxxx-yyyy-zzzz"], "fix_versions": ["9.9"]}


@pytest.fixture()
def audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    mod = _audit_module()
    monkeypatch.setattr(mod, "IGNORE", tmp_path / "ignore")
    monkeypatch.setattr(mod, "tool_python", lambda: Path("/nonexistent/python"))
    return mod


def _answers(mod, monkeypatch: pytest.MonkeyPatch, answers: dict) -> None:
    monkeypatch.setattr(mod, "run_service", lambda py, service, workdir: answers[service])


def test_audit_fails_on_a_finding(audit, monkeypatch, capsys) -> None:
    _answers(audit, monkeypatch, {"pypi": ("ok", _report({"name": "torch", "version": "2.0", "vulns": [VULN]},
                                                          {"name": "numpy", "version": "2.4.6", "vulns": []}))})
    assert audit.main() == 1
    out = capsys.readouterr().out
    assert "VULNERABLE: torch 2.0 PYSEC-2099-1" in out and "fixed in: 9.9" in out


def test_audit_passes_a_finding_ignored_with_a_reason(audit, monkeypatch, capsys) -> None:
    audit.IGNORE.write_text("# comment\n\nGHSA-xxxx-yyyy-zzzz  # only reachable through torch.distributed, unused\n")
    _answers(audit, monkeypatch, {"pypi": ("ok", _report({"name": "torch", "version": "2.0", "vulns": [VULN]}))})
    assert audit.main() == 0
    assert "ignored: torch 2.0 PYSEC-2099-1 (GHSA-XXXX-YYYY-ZZZZ: only reachable" in capsys.readouterr().out


def test_audit_ignore_entry_needs_a_reason(audit) -> None:
    audit.IGNORE.write_text("PYSEC-2099-1\n")
    with pytest.raises(SystemExit, match="a reason is required"):
        audit.read_ignores(audit.IGNORE)


def test_audit_says_not_audited_when_no_service_answers(audit, monkeypatch, capsys) -> None:
    _answers(audit, monkeypatch, {"pypi": ("unreachable", None), "osv": ("unreachable", None)})
    assert audit.main() == 0
    assert "NOT AUDITED" in capsys.readouterr().out


def test_audit_falls_back_to_osv(audit, monkeypatch, capsys) -> None:
    _answers(audit, monkeypatch, {"pypi": ("unreachable", None),
                                  "osv": ("ok", _report({"name": "numpy", "version": "2.4.6", "vulns": []}))})
    assert audit.main() == 0
    assert "passed: no known vulnerabilities (osv" in capsys.readouterr().out


def test_audit_treats_all_skipped_as_unreachable(audit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PyPI mirror without the per-version JSON pages: pip-audit exits 0 with every package skipped."""
    report = _report({"name": "numpy", "skip_reason": "Dependency not found on PyPI and could not be audited"})

    def fake_run(cmd, **_):
        Path(cmd[cmd.index("-o") + 1]).write_text(__import__("json").dumps(report))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(audit.subprocess, "run", fake_run)
    assert audit.run_service(Path("python"), "pypi", tmp_path) == ("unreachable", None)


def test_lock_is_hashed_and_has_the_build_backend() -> None:
    lock = (REPO_ROOT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M))
    for name in ("torch", "mlflow", "transformers", "pytest", "datasketch", "spacy", "setuptools", "pip"):
        assert name in pins, name
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.split("\n", 2)[2].strip())
    assert all("--hash=sha256:" in b for b in blocks)
    assert "lakeloop" not in pins


def test_lock_satisfies_pyproject() -> None:
    """requirements.lock is stale when pyproject.toml asks for something it does not pin: run `make lock`."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = (REPO_ROOT / "requirements.lock").read_text()
    pins = {canonicalize_name(n): v for n, v in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock, re.M)}
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [r for extra in ("test", "bench", "ner") for r in project["optional-dependencies"][extra]]
    stale = [r for r in map(Requirement, wanted) if pins.get(canonicalize_name(r.name)) is None
             or not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert not stale, f"not satisfied by requirements.lock: {stale} (run `make lock`)"
