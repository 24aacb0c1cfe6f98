"""The gold tables' row-count check counts what the stream can produce (issue 20, item 4)."""

from __future__ import annotations

import pytest

from features.checks import min_training_rows


@pytest.mark.parametrize(("examples", "pairs", "passed"), [
    (0, 40, True),  # a preference-only app: no pointwise rows, and enough to train on
    (40, 0, True),  # a thumbs-only app
    (4, 5, False),
    (0, 0, False),
])
def test_min_training_rows_counts_examples_and_pairs_together(examples: int, pairs: int, passed: bool) -> None:
    out = min_training_rows(examples, pairs, 10)
    assert out.passed is passed
    assert out.metadata == {"rows": examples + pairs, "examples": examples, "pairs": pairs, "minimum": 10}
    assert f"{examples} pointwise examples + {pairs} preference pairs" in out.description
