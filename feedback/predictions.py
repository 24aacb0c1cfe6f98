"""The prediction record: one scored (prompt, response) of the scoring service, as sent to Kafka.

The serving side (issue 6) publishes these to ``settings.predictions_topic``; the same exactly-once
ingestor lands them in ``bronze/predictions``, so feedback can be joined to the model version that
served it (on ``response_id``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from feedback.validation import DEFAULT_BOUNDS, MAX_MEMBERS, Invalid, TimeBounds, Valid, validate_record

Ident = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Alias = Literal["champion", "canary"]


class PredictionRecord(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False,
                              json_schema_extra={"maxProperties": MAX_MEMBERS})

    request_id: Ident
    response_id: Ident
    conversation_id: Ident
    model_name: Ident
    model_version: Ident
    alias: Alias = Field(description="Which alias served the request.")
    score: float = Field(ge=0.0, le=1.0, description="P(user satisfied) from the reward model.")
    latency_ms: float = Field(ge=0.0)
    prompt: str
    response: str
    served_at: AwareDatetime = Field(description="RFC 3339 with an offset.")


PREDICTION_ADAPTER: TypeAdapter[PredictionRecord] = TypeAdapter(PredictionRecord)


def validate_prediction(raw: bytes | str | dict[str, Any] | None, *, max_bytes: int = 1024 * 1024,
                        bounds: TimeBounds | None = DEFAULT_BOUNDS) -> Valid | Invalid:
    """A ``Valid`` (typed record + raw text) or an ``Invalid`` (stage + reason). Never raises.

    ``bounds``: the accepted range of ``served_at`` at the current time (None checks the schema alone).
    """
    if isinstance(raw, dict):
        raw = json.dumps(raw, ensure_ascii=False)
    if isinstance(raw, str):
        raw = raw.encode("utf-8", errors="surrogatepass")
    return validate_record(PREDICTION_ADAPTER, raw, max_bytes=max_bytes, time_field="served_at", bounds=bounds)
