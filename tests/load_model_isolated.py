"""Run as a script: ``python -I tests/load_model_isolated.py MODEL_DIR REPO_ROOT...``.

Loads the MLflow model in MODEL_DIR with lakeloop's own packages importable from nowhere but the model's ``code/``
folder: the editable install's finder is removed, the repository roots are taken off ``sys.path``, and a finder refuses
any lakeloop module found under them. Scores two rows and prints JSON: the scores, and the file each lakeloop module
came from."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys
from typing import Any

OURS = {"trainers", "infra", "features", "monitors", "orchestration", "bench", "tests"}


def main(model_dir: str, roots: list[str]) -> None:
    prefixes = tuple(r.rstrip("/") + "/" for r in roots)

    def in_repo(path: Any) -> bool:
        p = f"{path or ''}/"
        return p.startswith(prefixes) and "/.venv/" not in p

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
            if name.split(".")[0] not in OURS:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or in_repo(spec.origin) or any(in_repo(p) for p in (spec.submodule_search_locations or [])):
                raise ImportError(f"{name} is not in the model's code (found: {spec and spec.origin})")
            return spec

    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in f"{type(f).__module__} {f!r}".lower()]
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and not in_repo(p)]
    sys.meta_path.insert(0, Block())

    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_dir)
    out = model.predict(pd.DataFrame({"prompt": ["q1", "q1"], "response": ["good answer here", "bad"]}))
    modules = {k: getattr(v, "__file__", None) for k, v in sys.modules.items() if k.split(".")[0] in OURS}
    print(json.dumps({"scores": out["score"].tolist(), "modules": modules}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
