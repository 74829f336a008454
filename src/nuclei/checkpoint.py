"""Checkpoints: weights + optimiser state + the config they were trained with + the git commit, written atomically."""
from __future__ import annotations

import io
import subprocess
from pathlib import Path

import torch

from .atomic import atomic_write_bytes
from .errors import DataError


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(path: str | Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found; run the train stage first")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file
        raise DataError(f"{path}: unreadable checkpoint ({err})") from err


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """The trained model (eval mode) and the input normalisation it was trained with, from one read of the file."""
    from .models.build import build_model

    state = load_checkpoint(path, device)
    model_cfg = dict(state["config"]["model"], encoder_weights=None)  # the weights come from the checkpoint
    model = build_model(model_cfg)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state["input"]
