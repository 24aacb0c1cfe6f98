"""The typed description of a training run. Unknown keys are rejected so a typo never silently trains
the wrong thing; the Delta versions of the gold tables are pinned here before the run starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from infra.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]
CandidateFamily = Literal["encoder", "tfidf_pairwise", "length_support", "hybrid", "hybrid_encoder"]
Precision = Literal["auto", "fp32", "bf16"]


class TrainConfig(BaseModel):
    """Everything that decides what a run computes. Saved in every checkpoint and logged to MLflow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # what to start from
    base_model: str = Field("all-MiniLM-L6-v2", description="'all-MiniLM-L6-v2' (the offline package) or a local HF checkpoint dir.")
    pooling: Literal["mean", "cls"] = "mean"
    length_feature: bool = Field(True, description="Feed log(response characters) to the head beside the pooled text.")
    support_feature: bool = Field(True, description="Feed the response's lexical support by its prompt (share of its word bigrams "
                                  "found in the prompt, trainers.model.support) to the head: with retrieved passages in the prompt "
                                  "it says how grounded an answer is, which the encoder cut at max_length cannot see.")
    freeze_layers: int = Field(5, ge=0, description="Freeze the embeddings and this many bottom encoder layers (0 = tune all). "
                               "5 (top layer + head tuned) is the CPU default: backward stops below the top layer; GPU: 0.")
    cache_frozen: bool = Field(True, description="Run the frozen embeddings + bottom blocks once per distinct text and train the "
                               "top block(s) + head on the cached states (same model; an epoch then costs the top only).")
    group_by_prompt: bool = Field(True, description="Batch a prompt's items together (its thumbs, correction, comparisons) so "
                                  "each answer is encoded once per step; shuffling and length grouping act on prompts.")
    # which candidates compete (trainers/selection.py): the validation split picks hyperparameters and the winner
    candidates: tuple[CandidateFamily, ...] = Field(("encoder", "tfidf_pairwise", "length_support", "hybrid", "hybrid_encoder"),
                                                    min_length=1,
                                                    description="Families trained on the same pinned data; the one best on the "
                                                    "validation split (pairwise accuracy) is the run's model. Without 'encoder' "
                                                    "no transformer is trained (seconds instead of minutes). 'hybrid_encoder' reads "
                                                    "the base encoder's embedding of each distinct text: beside 'encoder' (and "
                                                    "cache_frozen) from the encoder's frozen cache, alone by its own pass "
                                                    "(~6-30 texts/s on 2 CPU cores).")
    validation_share: float = Field(0.2, ge=0, lt=1, description="Share of the train split's prompt clusters held out to select "
                                    "hyperparameters and the winner (never the eval split). With several candidates the encoder "
                                    "trains on the rest; 0 = no selection (the first family in candidates is the model).")
    # what to read (None = resolved to the latest version by the launcher, then pinned)
    lake_root: str | None = Field(None, description="Lake root URI; None = the settings' lake.")
    examples_version: int | None = Field(None, ge=0, description="Delta version of gold/training_examples.")
    pairs_version: int | None = Field(None, ge=0, description="Delta version of gold/preference_pairs.")
    max_train_examples: int | None = Field(None, ge=1, description="Cap on pointwise rows (smoke runs).")
    max_train_pairs: int | None = Field(None, ge=1, description="Cap on pairs (smoke runs).")
    flip_labels: bool = Field(False, description="Invert every label/preference: a deliberately bad model for gate tests.")
    # loss
    pointwise_weight: float = Field(1.0, ge=0, description="1: with 2 the few hundred thumbs labels dominate the head (docs/design/training.md).")
    pairwise_weight: float = Field(1.0, ge=0)
    tie_weight: float = Field(0.0, ge=0, description="Weight of ties (target 0.5) in the pairwise loss; 0 drops them.")
    head_l2: float = Field(0.0, ge=0, description="L2 penalty on the head's weights over the pooled text dims (not the length weight). "
                           "0.1-0.3 with probe_steps stops the head memorizing the thumbs labels (AUC ~ length baseline) but also "
                           "stops it ranking pairs (~0.50); 0 favours pairwise accuracy, the gate's primary metric.")
    probe_steps: int = Field(0, ge=0, description="Linear-probe warm start: full-batch steps fitting the head alone (same losses + head_l2) "
                             "on the frozen features of every training text before fine-tuning; 0 = random head.")
    probe_lr: float = Field(1e-2, gt=0, description="AdamW lr of the linear-probe warm start.")
    rater_length_bias: bool = Field(False, description="Bradley-Terry with a rater length-bias term: P(a over b) = "
                                    "sigmoid(r(a) - r(b) + gamma * (len(a) - len(b))), gamma learned from the pairs and not part of "
                                    "the score, so the score's length weight comes from thumbs/ratings (docs/design/training.md).")
    pointwise_trains_text: bool = Field(True, description="False: pointwise labels fit only the score's length weight and bias (the "
                                        "text part is detached in their loss) and the pairs train only the text part; for a few "
                                        "hundred thumbs beside thousands of pairs, where the text memorizes the thumbs. Use with "
                                        "rater_length_bias (the pairs' length preference then goes to gamma).")
    pair_center_weight: float = Field(0.0, ge=0, description="With pointwise_trains_text=False: penalty on the squared midpoint of "
                                      "each pair's text parts, ((t(a) + t(b)) / 2)^2. Comparisons fix the text part only up to a "
                                      "per-prompt constant; this pins that constant to 0, so the text part does not add arbitrary "
                                      "per-prompt levels to the score and the level comes from the thumbs (length weight and bias). "
                                      "Bradley-Terry is unchanged by it (it sees differences only).")
    rater_bias_lr: float = Field(1e-2, gt=0, description="AdamW lr of gamma (one number; the head's lr would barely move it).")
    balance_pointwise: bool = Field(False, description="Weight positive labels by negatives/positives in the BCE (rare thumbs-ups).")
    # optimisation
    lr: float = Field(1e-4, gt=0, description="Encoder lr (tuned layers only). CPU default; GPU full fine-tune: 3e-5.")
    head_lr: float = Field(1e-3, gt=0, description="Head lr (1e-2 made the head chase single batches' thumbs labels).")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    epochs: int = Field(2, ge=1, description="2 on qa_feedback: with the frozen cache an epoch costs the top block only.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(16, ge=1, description="Items (examples or pairs) per micro-batch.")
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(128, ge=16, le=512, description="Tokens of prompt + response; the prompt is cut first, down to a "
                            "quarter, then the response (128 keeps ~80% of qa_feedback answers whole; GPU: 256).")
    pad_buckets: int = Field(1, ge=1, le=8, description="Encoder calls per micro-batch, sequences bucketed by length. 1 on CPU: "
                             "length-grouped batches already pad little and each extra call costs more than the padding it saves; "
                             "2-4 can pay on a GPU with pair data (forced to 1 under DDP).")
    length_group_mega: int = Field(32, ge=1, description="Megabatch = this many batches, sorted by length inside.")
    seed: int = 13
    # hardware
    device: Device = "auto"
    precision: Precision = "auto"
    compile: bool = False
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads; None = the cores this process may use (CPU).")
    # bookkeeping
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    output_dir: str | None = Field(None, description="Run folder (checkpoints, final model); default <artifacts>/training/<run_name>.")
    run_name: str = "reward-model"
    experiment: str = "lakeloop-reward"
    track: bool = Field(True, description="Log to MLflow (settings.tracking_uri).")

    @model_validator(mode="after")
    def _center_needs_split(self) -> "TrainConfig":
        if self.pair_center_weight > 0 and self.pointwise_trains_text:
            raise ValueError("pair_center_weight > 0 needs pointwise_trains_text=False (it centres the text part of the split logit; "
                             "with pointwise_trains_text=True the thumbs set the text part's level themselves)")
        return self

    def pinned(self) -> dict[str, Any]:
        return {"examples_version": self.examples_version, "pairs_version": self.pairs_version}


def load_config(source: str | Path | dict[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a JSON file or a dict plus overrides; bad keys or values raise ConfigError."""
    data: dict[str, Any] = {}
    if isinstance(source, dict):
        data = dict(source)
    elif source is not None:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"training config {path} does not exist", hint="pass a JSON file written by `lakeloop train --write-config`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"training config {path} is not valid JSON: {exc}", hint="fix the JSON syntax") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid training config: {problems}", hint="see trainers/config.py for the fields") from None
