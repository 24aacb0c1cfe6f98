"""The browser example the collector serves at ``GET /example/``: ``static/example.html``, one self-contained page.

It shows a scored answer with thumbs-up / thumbs-down buttons and a correction box and sends each click to
``POST /v1/feedback`` with ``fetch`` (same origin: CORS settings do not matter to it), one schema v1 event per
click, and lists the collector's verdict on each. Its script and style are inline, so the page is served with a
Content-Security-Policy that allows exactly those (by SHA-256), requests to its own origin only, no framing and
no Referer.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

EXAMPLE_PATH = "/example/"
PAGE_PATH = Path(__file__).with_name("static") / "example.html"
_INLINE = re.compile(rb"<(script|style)>(.*?)</\1>", re.S)


@dataclass(frozen=True)
class StaticPage:
    body: bytes
    headers: dict[str, str]


def _sources(html: bytes, tag: bytes) -> str:
    hashes = [hashlib.sha256(body).digest() for t, body in _INLINE.findall(html) if t == tag]
    return " ".join(f"'sha256-{base64.b64encode(h).decode()}'" for h in hashes) or "'none'"


def load_example_page(path: Path = PAGE_PATH) -> StaticPage:
    """The page and its headers (read once, when the app is built)."""
    html = path.read_bytes()
    csp = "; ".join([
        "default-src 'none'", f"script-src {_sources(html, b'script')}", f"style-src {_sources(html, b'style')}",
        "connect-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
    ])
    return StaticPage(html, {"content-security-policy": csp, "referrer-policy": "no-referrer",
                             "x-content-type-options": "nosniff", "cache-control": "no-cache"})
