"""The champion's drift reference is built once per (model, version, sizes) and read back by later checks."""

from __future__ import annotations

import pandas as pd

from infra.settings import Settings
from monitors.drift_job import prepare_reference
from monitors.reference_cache import cached_reference, path_for


def _raw(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"prompt": [f"question {i} about lakes" for i in range(n)],
                         "response": [f"answer {i} " + "word " * (i % 7) for i in range(n)],
                         "score": [i / n for i in range(n)]})


def test_built_once_then_read_back(settings: Settings) -> None:
    calls: list[int] = []

    def build():
        calls.append(1)
        return prepare_reference(_raw(), embed_sample=0)

    first, hit1 = cached_reference(settings, "3", sample=600, embed_sample=0, build=build)
    second, hit2 = cached_reference(settings, "3", sample=600, embed_sample=0, build=build)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    pd.testing.assert_frame_equal(first.features, second.features)
    # another version or size is another reference
    cached_reference(settings, "4", sample=600, embed_sample=0, build=build)
    cached_reference(settings, "3", sample=300, embed_sample=0, build=build)
    assert len(calls) == 3


def test_an_unreadable_file_is_rebuilt(settings: Settings) -> None:
    path = path_for(settings, "7", sample=10, embed_sample=0)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"torn")
    ref, hit = cached_reference(settings, "7", sample=10, embed_sample=0, build=lambda: prepare_reference(_raw(), embed_sample=0))
    assert not hit and len(ref.features) == 40
    assert cached_reference(settings, "7", sample=10, embed_sample=0, build=lambda: None)[1]  # type: ignore[arg-type,return-value]
