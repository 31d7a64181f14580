"""Distilled prompts: a language model writes a short visual description of each defect class into an editable file.

    python -m ultralytics_dsmoe.text.generate --data aluminum.yaml --out prompts.yaml \\
        [--model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B] [--surface "aluminum foil"]

Then point the dataset yaml at it (``prompts: prompts.yaml``, relative to the data yaml) or paste its mapping under
``prompts:``. Generation is greedy (deterministic). DeepSeek-R1 models think aloud before answering: everything up to
``</think>`` is dropped and the first sentence of the answer is kept. A class whose answer comes back empty keeps the
shipped-bank or template prompt, and the file says so.
"""

from __future__ import annotations

import argparse
import re
from datetime import date
from pathlib import Path

import yaml

from ultralytics_dsmoe.util import class_list, class_phrase

from .encoders import DEFAULT_LLM, load_pretrained
from .prompts import resolve_prompts

QUESTION = (
    "In one sentence of at most 25 words, describe what a '{name}' defect looks like on {surface} in an inspection "
    "image: its shape, size, brightness and edges. Answer with the description only."
)


def answer(text: str) -> str:
    """The first sentence of a reply, without an R1-style <think> block."""
    text = text.split("</think>")[-1].strip()
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].strip()
    return " ".join(text.split())


def generate_prompts(names: list[str], source: str = DEFAULT_LLM, surface: str = "an industrial surface",
                     max_new_tokens: int = 256) -> dict[str, str | None]:
    """name -> generated description (None when the model gave nothing usable)."""
    import torch

    from transformers import AutoModelForCausalLM

    tokenizer, model = load_pretrained(source, AutoModelForCausalLM)
    out = {}
    for name in names:
        question = QUESTION.format(name=class_phrase(name), surface=surface)
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                 add_generation_prompt=True)
        else:
            text = question + "\n"
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            tokens = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        reply = answer(tokenizer.decode(tokens[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
        out[name] = reply or None
    return out


def write_prompts(file: Path, names: list[str], generated: dict, source: str) -> None:
    fallback = dict(zip(names, resolve_prompts(names)))
    lines = [f"# Class prompts written by {source} on {date.today()} (ultralytics_dsmoe.text.generate).",
             "# Edit freely. Use from a data yaml as `prompts: <this file>` or paste the mapping under `prompts:`."]
    body = {}
    for name in names:
        if generated.get(name):
            body[name] = generated[name]
        else:
            lines.append(f"# {name}: the model gave no usable answer; kept the shipped/template prompt")
            body[name] = fallback[name]
    file.write_text("\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1000))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset yaml (its names: are used)")
    p.add_argument("--model", default=DEFAULT_LLM, help="Hugging Face causal LM id or local folder")
    p.add_argument("--out", type=Path, default=Path("prompts.yaml"))
    p.add_argument("--surface", default="an industrial surface", help="what the images show, e.g. 'aluminum foil'")
    p.add_argument("--max-new-tokens", type=int, default=256)
    a = p.parse_args(argv)
    from ultralytics.utils.checks import check_yaml

    data = yaml.safe_load(Path(check_yaml(a.data)).read_text())
    names = class_list(data["names"])
    write_prompts(a.out, names, generate_prompts(names, a.model, a.surface, a.max_new_tokens), a.model)
    print(f"Wrote {len(names)} prompts to {a.out}")


if __name__ == "__main__":
    main()
