"""The MLflow pyfunc of the reward model (the brief's contract): ``predict(DataFrame[prompt, response])``
returns a DataFrame with one column ``score`` = P(user satisfied) in [0, 1]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from infra.errors import DataError

ARTIFACT_KEY = "reward_model"


class RewardPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        import torch

        from trainers.model import load_reward_model

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.model, self.tokenizer, self.max_length = load_reward_model(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from trainers.model import score

        missing = [c for c in ("prompt", "response") if c not in model_input.columns]
        if missing:
            raise DataError(f"reward model input lacks columns {missing}", hint="send a DataFrame with string columns prompt and response")
        scores = score(
            self.model,
            self.tokenizer,
            model_input["prompt"].fillna("").astype(str).tolist(),
            model_input["response"].fillna("").astype(str).tolist(),
            max_length=self.max_length,
        )
        return pd.DataFrame({"score": scores})
