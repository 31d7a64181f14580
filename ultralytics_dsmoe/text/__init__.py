"""Stage 1 text semantics: class prompts -> frozen-encoder embeddings -> the model's ``ClassText`` buffers.

``fill_text(model, names, data_prompts)`` is called by the trainer seam (``patches.trainer``) once the
dataset's class names are known, before the EMA copy, DDP wrapping and the optimizer exist. It resolves one prompt per
class, loads embeddings from the cache or computes them with the encoder the model yaml names (``text_model``,
``text_pooling``), and writes them into every ``ClassText`` together with their provenance (``text_source``: encoder
id, prompts, class names), which checkpoints carry: ``yolo val``/``predict`` on a checkpoint need no text model.

The model-yaml key ``text_control`` tests the paper's claim that the language model's semantics help: ``shuffled``
gives each class another class's prompt embedding, ``random`` gives it a random vector of the same norm (fixed seed);
``real`` (the default) is the prompts themselves. ``dsmoe benchmark --finetune-from`` trains all three.
"""

from __future__ import annotations

import torch

from ultralytics.utils import LOGGER

from ultralytics_dsmoe.util import class_list, model_cfg

from .cache import load_cached, save_cached
from .encoders import DEFAULT_LLM, TextModelUnavailable, load_encoder
from .prompts import resolve_prompts

__all__ = ("CONTROLS", "DEFAULT_LLM", "TextModelUnavailable", "controlled", "embed_prompts", "fill_text", "resolve_prompts")

CONTROLS = ("real", "shuffled", "random")  # values of the model-yaml key text_control


def embed_prompts(prompts: list[str], text_model: str = "auto", pooling: str = "mean") -> tuple[str, torch.Tensor]:
    """(encoder id, (n, d) embeddings) for ``prompts``, from the cache when possible (no model is loaded then)."""
    encoder = load_encoder(text_model, pooling)
    cached = load_cached(encoder.id, prompts)
    if cached is not None:
        LOGGER.info(f"DS-MoE text: {len(prompts)} prompt embeddings from the cache ({encoder.id}).")
        return encoder.id, cached
    LOGGER.info(f"DS-MoE text: embedding {len(prompts)} class prompts with {encoder.id}...")
    embeddings = encoder.encode(prompts)
    save_cached(encoder.id, prompts, embeddings)
    return encoder.id, embeddings


def controlled(embeddings: torch.Tensor, control: str) -> torch.Tensor:
    """The (nc, d) prompt embeddings under a text control: ``real`` as they are, ``shuffled`` rolled by one class (every
    class gets another's embedding when nc >= 2), ``random`` Gaussian directions (seed 0) with each row's norm kept."""
    if checked_control(control) == "shuffled":
        return embeddings.roll(1, dims=0)
    if control == "random":
        r = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(0)).to(embeddings)
        return r / r.norm(dim=1, keepdim=True) * embeddings.norm(dim=1, keepdim=True)
    return embeddings


def checked_control(control) -> str:
    """The model-yaml ``text_control`` value, or ValueError naming the valid ones."""
    if control not in CONTROLS:
        raise ValueError(f"text_control: {control!r} is not one of {', '.join(CONTROLS)}")
    return str(control)


def fill_text(model: torch.nn.Module, names: dict | list, data_prompts=None, root=None) -> None:
    """Fill the model's ``ClassText`` buffers for these class names; reuse them only when names and prompts match."""
    from ultralytics_dsmoe.nn import ClassText

    blocks = [m for m in model.modules() if isinstance(m, ClassText)]
    if not blocks:
        return
    cfg = model_cfg(model)
    spec, pooling = str(cfg.get("text_model", "auto")), str(cfg.get("text_pooling", "mean"))
    control = checked_control(cfg.get("text_control", "real"))  # unknown: fails before anything is embedded
    names = class_list(names)
    prompts = resolve_prompts(names, data_prompts, root)
    for block in blocks:
        if len(names) != block.embeddings.shape[0]:
            raise ValueError(f"ClassText holds {block.embeddings.shape[0]} classes but the data has {len(names)}: {names}")
    # Provenance: the block's own record, or the model yaml's when a checkpoint's weights were copied into a model
    # rebuilt from its yaml (fine-tuning from best.pt); a yaml record alone does not vouch for placeholder vectors.
    recorded = cfg.get("text_source")
    sources = [b.text_source or (recorded if not b.is_placeholder() else None) for b in blocks]
    if all(reusable(source, names, prompts, spec, pooling) and source.get("control", "real") == control
           for source in sources):
        LOGGER.info(f"DS-MoE text: reusing the checkpoint's embeddings ({sources[0]['encoder']}).")
        for block, source in zip(blocks, sources):
            block.text_source = dict(source)
        return
    from ultralytics.utils.torch_utils import torch_distributed_zero_first
    from ultralytics.utils import RANK

    with torch_distributed_zero_first(RANK):  # rank 0 embeds and caches first; the other ranks then read the cache
        encoder_id, embeddings = embed_prompts(prompts, spec, pooling)
    source = {"encoder": encoder_id, "prompts": prompts, "names": names}
    if control != "real":
        source["control"] = control
        embeddings = controlled(embeddings, control)
        LOGGER.info(f"DS-MoE text: text_control {control}: the class embeddings are a control, not the prompts.")
    cfg["text_source"] = source  # saved with the checkpoint's yaml (when the model has one)
    for block in blocks:
        block.set_text(embeddings, source)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(block.embeddings, src=0)  # identical on every rank, bit for bit


def reusable(source: dict | None, names: list, prompts: list, spec: str, pooling: str) -> bool:
    """Whether embeddings recorded as ``source`` are the right ones for these classes under ``text_model: spec`` and
    ``text_pooling: pooling``. An explicit encoder must match the recorded id exactly (model and recipe). Under
    ``auto`` the encoder ``auto`` picked when they were made is kept (another machine may lack that LLM), as long
    as the pooling is the one asked for."""
    if not source or source.get("names") != names or source.get("prompts") != prompts:
        return False
    if spec.lower() == "auto":
        return source["encoder"].split("|")[1] == pooling  # ids are "<model>|<pooling>[|l2]"
    return source["encoder"] == load_encoder(spec, pooling).id
