#!/usr/bin/env python3
"""pip-audit against requirements.lock (CI runs it first: .ci/run; locally: make audit).

Installs the auditor from .ci/pip-audit.lock (hash-checked) into .lakeloop-audit/venv, then asks the vulnerability
services in turn (PyPI's JSON API, then OSV) about every package pinned in the lock. The outcome:

- a service answered and found a vulnerability not listed in .ci/pip-audit-ignore: exit 1, the findings printed;
- a service answered and found nothing else: exit 0;
- no service answered (unreachable, or it answered "not found" for every package, as a mirror without PyPI's
  per-version JSON pages does): "NOT AUDITED", the reason, exit 0. CI cannot vouch for the lock then: say so, do not
  fail for that alone.

Standard library only, any Python 3.9+ (the auditor's venv is made with the running interpreter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
TOOL_LOCK = ROOT / ".ci" / "pip-audit.lock"
IGNORE = ROOT / ".ci" / "pip-audit-ignore"
VENV = ROOT / ".lakeloop-audit" / "venv"
SERVICES = ("pypi", "osv")
TIMEOUT_S = 600


def log(msg: str) -> None:
    print(f"[audit] {msg}", flush=True)


def read_ignores(path: Path | None = None) -> dict[str, str]:
    """``ID  # reason`` per line; blank lines and ``#`` comments skipped. An entry without a reason is an error."""
    path = path or IGNORE
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        vid, _, reason = line.partition("#")
        vid, reason = vid.strip(), reason.strip()
        if not vid or " " in vid or not reason:
            raise SystemExit(f"[audit] {path.name}:{n}: expected `ID  # reason` (a reason is required), got {raw!r}")
        out[vid.upper()] = reason
    return out


def tool_python() -> Path:
    py = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    want = TOOL_LOCK.read_text()
    if not (py.exists() and stamp.exists() and stamp.read_text() == want):
        log(f"installing pip-audit from {TOOL_LOCK.relative_to(ROOT)} into {VENV.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--require-hashes", "--no-deps", "-r", str(TOOL_LOCK)], check=True)
        stamp.write_text(want)
    return py


def classify(report: dict) -> tuple[int, list[dict], list[dict]]:
    """(audited count, deps with vulns, skipped deps) of a pip-audit JSON report."""
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if "skip_reason" in d]
    vulnerable = [d for d in deps if d.get("vulns")]
    return len(deps) - len(skipped), vulnerable, skipped


def run_service(py: Path, service: str, workdir: Path) -> tuple[str, dict | None]:
    """Run pip-audit with one service; ("ok", report) or ("unreachable", None) with the reason logged."""
    out = workdir / f"{service}.json"
    cmd = [str(py), "-m", "pip_audit", "-r", str(LOCK), "--require-hashes", "--disable-pip", "--progress-spinner", "off",
           "-s", service, "-f", "json", "-o", str(out), "--timeout", "30"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        log(f"{service}: no answer within {TIMEOUT_S} s")
        return "unreachable", None
    if not out.exists():  # pip-audit stopped before writing: a connection error, DNS, TLS...
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        log(f"{service}: could not be reached (pip-audit exit {proc.returncode}): {last[:300]}")
        return "unreachable", None
    report = json.loads(out.read_text())
    audited, _, skipped = classify(report)
    if audited == 0:
        reason = skipped[0]["skip_reason"] if skipped else "no packages"
        log(f"{service}: answered for none of the {len(skipped)} packages (e.g. {reason!r}): treated as unreachable")
        return "unreachable", None
    return "ok", report


def main() -> int:
    ignores = read_ignores()
    py = tool_python()
    reasons = []
    with tempfile.TemporaryDirectory(prefix="lakeloop-audit-") as tmp:
        for service in SERVICES:
            status, report = run_service(py, service, Path(tmp))
            if status != "ok":
                reasons.append(service)
                continue
            audited, vulnerable, skipped = classify(report)
            log(f"{service}: audited {audited} of {audited + len(skipped)} packages pinned in {LOCK.name}")
            for d in skipped:
                log(f"  not audited: {d['skip_reason']}")
            findings, ignored = [], []
            for d in vulnerable:
                for v in d["vulns"]:
                    ids = {v["id"].upper(), *(a.upper() for a in v.get("aliases", []))}
                    hit = next((i for i in sorted(ids) if i in ignores), None)
                    (ignored if hit else findings).append((d, v, hit))
            for d, v, hit in ignored:
                log(f"  ignored: {d['name']} {d['version']} {v['id']} ({hit}: {ignores[hit]})")
            for d, v, _ in findings:
                fix = ", ".join(v.get("fix_versions") or []) or "no fixed version"
                log(f"  VULNERABLE: {d['name']} {d['version']} {v['id']} {v.get('aliases', [])} fixed in: {fix}")
            if findings:
                log(f"FAILED: {len(findings)} known vulnerabilities in {LOCK.name}. Fix: raise the pin "
                    f"(make lock LOCK_ARGS='--upgrade-package NAME'), or list the ID in .ci/{IGNORE.name} "
                    f"with the reason it does not apply.")
                return 1
            log(f"passed: no known vulnerabilities ({service}; {len(ignored)} ignored with reasons)")
            return 0
    log(f"NOT AUDITED: no vulnerability service answered ({', '.join(reasons)}); {LOCK.name} was not checked "
        "for known vulnerabilities in this run (not a failure; run `make audit` where PyPI's or OSV's API is reachable)")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
