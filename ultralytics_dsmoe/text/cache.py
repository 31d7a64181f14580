"""On-disk cache of prompt embeddings, keyed by the encoder id and the exact prompts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ultralytics.utils import USER_CONFIG_DIR


def cache_dir() -> Path:
    return USER_CONFIG_DIR / "dsmoe" / "text-embeddings"


def cache_key(encoder_id: str, prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps({"encoder": encoder_id, "prompts": prompts}).encode()).hexdigest()[:32]


def load_cached(encoder_id: str, prompts: list[str]) -> torch.Tensor | None:
    """(n, d) embeddings stored for exactly this encoder and these prompts, else None."""
    file = cache_dir() / f"{cache_key(encoder_id, prompts)}.pt"
    if not file.is_file():
        return None
    entry = torch.load(file, map_location="cpu", weights_only=True)
    if entry.get("encoder") != encoder_id or entry.get("prompts") != prompts:  # never trust the hash alone
        return None
    return entry["embeddings"]


def save_cached(encoder_id: str, prompts: list[str], embeddings: torch.Tensor) -> Path:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{cache_key(encoder_id, prompts)}.pt"
    tmp = file.with_suffix(".tmp")
    torch.save({"encoder": encoder_id, "prompts": prompts, "embeddings": embeddings.float().cpu()}, tmp)
    tmp.replace(file)  # atomic: concurrent DDP ranks never read a half-written file
    return file
