"""Text normalization: Unicode NFC, every run of whitespace to one space, trimmed. Pure and idempotent."""

from __future__ import annotations

import unicodedata


def normalize_text(text: str | None) -> str | None:
    if text is None:
        return None
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())  # str.split() splits on every Unicode whitespace run and drops the ends
