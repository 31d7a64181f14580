"""On-disk cache of prompt embeddings, keyed by the encoder id and the exact prompts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ultralytics.utils import LOGGER, USER_CONFIG_DIR


def cache_dir() -> Path:
    return USER_CONFIG_DIR / "dsmoe" / "text-embeddings"


def cache_key(encoder_id: str, prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps({"encoder": encoder_id, "prompts": prompts}).encode()).hexdigest()[:32]


def load_cached(encoder_id: str, prompts: list[str]) -> torch.Tensor | None:
    """(n, d) embeddings stored for exactly this encoder and these prompts, else None.

    A cache is never a single point of failure: an entry that cannot be read (truncated, corrupt, from another format)
    or does not hold an (n, d) float tensor is reported with its file name, deleted, and treated as a miss, so the
    caller embeds the prompts again and rewrites it."""
    file = cache_dir() / f"{cache_key(encoder_id, prompts)}.pt"
    if not file.is_file():
        return None
    try:
        entry = torch.load(file, map_location="cpu", weights_only=True)
        embeddings = entry["embeddings"]
        if not (torch.is_tensor(embeddings) and embeddings.is_floating_point() and embeddings.shape[:1] == (len(prompts),)
                and embeddings.ndim == 2):
            raise ValueError(f"holds {type(embeddings).__name__} {tuple(getattr(embeddings, 'shape', ()))}, "
                             f"not ({len(prompts)}, d) embeddings")
    except Exception as e:  # any unreadable entry: rebuild rather than stop training
        LOGGER.warning(f"DS-MoE text: damaged embedding cache entry {file} ({type(e).__name__}: {e}); removing it "
                       "and embedding the prompts again.")
        file.unlink(missing_ok=True)
        return None
    if entry.get("encoder") != encoder_id or entry.get("prompts") != prompts:  # never trust the hash alone
        return None
    return embeddings


def save_cached(encoder_id: str, prompts: list[str], embeddings: torch.Tensor) -> Path:
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{cache_key(encoder_id, prompts)}.pt"
    tmp = file.with_suffix(".tmp")
    torch.save({"encoder": encoder_id, "prompts": prompts, "embeddings": embeddings.float().cpu()}, tmp)
    tmp.replace(file)  # atomic: concurrent DDP ranks never read a half-written file
    return file
