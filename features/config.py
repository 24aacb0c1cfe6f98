"""The curation config: every threshold, the poisoning cap, the MinHash parameters and the engine.

A frozen pydantic model that rejects unknown keys, so a typo in a Dagster run config or a test fails loudly.
Defaults are the ones the benchmark justifies (see docs/design/curation.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Engine = Literal["local", "spark"]
SurvivorRule = Literal["earliest", "latest"]


class MinHashParams(BaseModel):
    """MinHash LSH over word shingles. ``bands * rows == num_perm``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_perm: int = Field(128, ge=16, le=1024)
    bands: int = Field(32, ge=1)
    shingle: int = Field(5, ge=1, le=16, description="Words per shingle.")
    threshold: float = Field(0.7, gt=0.0, le=1.0, description="Estimated Jaccard at or above which two texts are near-duplicates.")
    seed: int = 1
    max_bucket: int = Field(64, ge=2, description="A doc is compared with at most this many earlier docs of one LSH bucket.")

    @model_validator(mode="after")
    def _bands_divide(self) -> "MinHashParams":
        if self.num_perm % self.bands:
            raise ValueError(f"bands ({self.bands}) must divide num_perm ({self.num_perm})")
        return self

    @property
    def rows(self) -> int:
        return self.num_perm // self.bands


class QualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_prompt_chars: int = Field(3, ge=0)
    min_response_chars: int = Field(5, ge=0)
    max_chars: int = Field(32_000, ge=1, description="Longest prompt or response kept.")
    min_alpha_ratio: float = Field(0.2, ge=0.0, le=1.0, description="Share of letters below which a text is noise.")


class CurationConfig(BaseModel):
    """Everything a curation run needs besides the data and the pseudonymization key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Engine = "local"
    quality: QualityParams = QualityParams()
    minhash: MinHashParams = MinHashParams()
    user_cap: float = Field(0.1, gt=0.0, le=1.0, description="Most any one user may contribute to one day of a training set.")
    user_cap_floor: int = Field(50, ge=1, description="A user may always contribute this many events per day (small days).")
    eval_fraction: float = Field(0.1, ge=0.0, le=1.0)
    survivor: SurvivorRule = "earliest"
    extra_pii_patterns: dict[str, str] = Field(default_factory=dict, description="Extra PII kinds: NAME -> regex; placeholder [NAME].")
    pii_ner: bool = Field(False, description="Also redact person names and locations with the NER pass (features.pii_ner; "
                          "needs the `ner` extra). Off: the fast structured pass only.")
    reference_wait_minutes: float = Field(60.0, ge=0, description="Pending reference events older than this are reported late.")
    signal_labels: bool = Field(False, description="Implicit signals become pointwise labels (features.labels).")
    commit_retries: int = Field(8, ge=0, description="Retries of a Delta commit that lost a race with another writer.")
