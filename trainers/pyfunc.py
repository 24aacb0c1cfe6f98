"""The MLflow pyfunc of the reward model (the brief's contract): ``predict(DataFrame[prompt, response])``
returns a DataFrame with one column ``score`` = P(user satisfied) in [0, 1]. The artifact folder holds whichever
candidate family won the selection: an encoder reward model (``trainers.model``) or a lexical one
(``trainers.lexical``, a folder with ``lexical.json``); both answer through the same ``predict``.

Logged as MLflow *models-from-code*: the model is the code file ``pyfunc_code.py`` (it calls
``mlflow.models.set_model(RewardPyfunc())``) plus the modules it imports, copied into the model's ``code/`` folder
(``stage_code``), and the weights as plain files (safetensors, JSON). Loading it runs that code and reads those files;
nothing is unpickled, and the model loads where lakeloop is not installed (``PIP_REQUIREMENTS`` does not name it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from infra.errors import DataError

ARTIFACT_KEY = "reward_model"
CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
# what the pyfunc imports, as paths under the repository root; copied into the model (``stage_code``)
SERVING_MODULES = ("trainers/__init__.py", "trainers/pyfunc.py", "trainers/model.py", "trainers/base_model.py", "trainers/lexical.py",
                   "trainers/embeddings.py", "trainers/frozen.py", "features/__init__.py", "features/dialogue.py", "infra/__init__.py", "infra/errors.py")
PIP_REQUIREMENTS = ["torch", "transformers", "safetensors", "pandas", "numpy", "scikit-learn", "scipy"]


def stage_code(dest: Path) -> list[str]:
    """Copy ``SERVING_MODULES`` into ``dest/<package>/``; -> the package folders, for ``code_paths``."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    for rel in SERVING_MODULES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dest / rel)
    return sorted({str(dest / rel.split("/", 1)[0]) for rel in SERVING_MODULES})


class RewardPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from trainers import lexical

        path = Path(context.artifacts[ARTIFACT_KEY])
        self.lexical = lexical.load(path) if lexical.is_lexical(path) else None
        if self.lexical is not None:
            return
        import torch

        from trainers.model import load_reward_model

        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
        self.model, self.tokenizer, self.max_length = load_reward_model(path)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from trainers.model import score

        missing = [c for c in ("prompt", "response") if c not in model_input.columns]
        if missing:
            raise DataError(f"reward model input lacks columns {missing}", hint="send a DataFrame with string columns prompt and response")
        prompts = model_input["prompt"].fillna("").astype(str).tolist()
        responses = model_input["response"].fillna("").astype(str).tolist()
        if getattr(self, "lexical", None) is not None:
            return pd.DataFrame({"score": self.lexical(prompts, responses)})
        scores = score(self.model, self.tokenizer, prompts, responses, max_length=self.max_length)
        return pd.DataFrame({"score": scores})


def local_scorer(path: Path) -> Any:
    """A ``(prompts, responses) -> scores`` callable over a saved candidate folder of either family."""
    import numpy as np

    from trainers import lexical

    if lexical.is_lexical(path):
        return lexical.load(path)
    from trainers.model import load_reward_model, score

    model, tok, max_length = load_reward_model(Path(path))
    return lambda p, r: np.asarray(score(model, tok, p, r, max_length=max_length), dtype=float)
