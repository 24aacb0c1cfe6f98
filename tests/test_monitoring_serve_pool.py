"""ModelPool loads a version, warms it up before it takes traffic, and keeps a version whose warm-up fails
(its real requests then count the failure against it). Unit tests with a fake registry."""

from __future__ import annotations

import pandas as pd
import pytest

from infra.settings import load_settings
from monitors import serve


class _Model:
    def __init__(self, *, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail
        self.pool: serve.ModelPool | None = None
        self.served_while_called: list[bool] = []  # was this model in the pool's serving snapshot at each call?

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self.calls += 1
        if self.pool is not None:
            s = self.pool.serving
            self.served_while_called.append(any(x is not None and x.model is self for x in (s.champion, s.canary)))
        if self.fail:
            raise RuntimeError("broken weights")
        return pd.DataFrame({"score": [0.5] * len(frame)})


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, _Model]:
    models = {"1": _Model(), "2": _Model(fail=True)}
    aliases = {"champion": "1", "canary": "2"}
    monkeypatch.setattr(serve.model_store, "aliases", lambda s: dict(aliases))
    monkeypatch.setattr(serve.model_store, "canary_share", lambda s: 0.25)
    monkeypatch.setattr(serve.model_store, "load_pyfunc", lambda s, v: models[v])
    return models


def test_versions_are_warmed_up_before_they_serve(tmp_path, registry: dict[str, _Model]) -> None:
    pool = serve.ModelPool(load_settings(home=tmp_path))
    for model in registry.values():
        model.pool = pool
    snapshot = pool.refresh()
    assert snapshot.champion is not None and snapshot.champion.version == "1"
    assert registry["1"].calls == 3  # warmed up once, on load ...
    assert registry["1"].served_while_called == [False, False, False]  # ... before the snapshot that serves it
    assert snapshot.canary is not None and snapshot.canary.version == "2"  # a failed warm-up is logged, not fatal
    assert pool.last_error is None
    pool.refresh()
    assert registry["1"].calls == 3  # cached: no second load or warm-up
