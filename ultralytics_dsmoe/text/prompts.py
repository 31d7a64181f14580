"""Class prompts: from the data yaml, else the shipped bank (cfg/prompts.yaml), else a template from the class name."""

from __future__ import annotations

from pathlib import Path

import yaml

from ultralytics_dsmoe.meta import CFG_DIR
from ultralytics_dsmoe.util import class_key, class_list, class_phrase

TEMPLATE = "a photo of a {name} defect on an industrial surface"


def prompt_bank(file: Path | None = None) -> dict[str, str]:
    """The shipped class -> prompt mapping, keys normalised by ``class_key``."""
    bank = yaml.safe_load((file or CFG_DIR / "prompts.yaml").read_text()) or {}
    return {class_key(k): str(v) for k, v in bank.items()}


def resolve_prompts(names: dict | list, data_prompts: dict | list | str | None = None, root: Path | None = None) -> list[str]:
    """One prompt per class, in class-index order.

    Args:
        names: the dataset's ``names`` (dict index -> name, or list).
        data_prompts: the dataset yaml's optional ``prompts:``: a mapping keyed by class name or index, a list in
            class order, or the path of a yaml file holding such a mapping (relative paths: to ``root``, the data
            yaml's folder). Entries it lacks fall back to the bank, then to ``TEMPLATE``.
        root: folder that relative prompt-file paths are resolved against.
    """
    names = class_list(names)
    if isinstance(data_prompts, (str, Path)):
        file = Path(data_prompts)
        file = file if file.is_absolute() or root is None else Path(root) / file
        if not file.is_file():
            raise FileNotFoundError(f"The data yaml's prompts file '{file}' does not exist.")
        data_prompts = yaml.safe_load(file.read_text()) or {}
    if isinstance(data_prompts, (list, tuple)):
        if len(data_prompts) != len(names):
            raise ValueError(f"The data yaml lists {len(data_prompts)} prompts for {len(names)} classes {names}.")
        data_prompts = dict(enumerate(data_prompts))
    empty = [i for i, name in enumerate(names) if not class_key(name)]
    if empty:
        raise ValueError(f"Class {empty[0]} of {names} has an empty name: every class needs a name (its prompt's subject).")
    given = by_class(data_prompts or {}, names)
    bank = prompt_bank()
    prompts = []
    for i, name in enumerate(names):
        prompt = given.get(i)
        if prompt is None:
            prompt = bank.get(class_key(name), TEMPLATE.format(name=class_phrase(name)))
        prompts.append(str(prompt))
    return prompts


def by_class(prompts: dict, names: list) -> dict[int, str]:
    """A data yaml's ``prompts:`` mapping keyed by class index. Keys are indices or class names (matched like dataset
    labels: trimmed, any case); a key that is neither is an error naming the closest class, never silently unused."""
    index = {class_key(name): i for i, name in enumerate(names)}
    out = {}
    for key, prompt in prompts.items():
        if not isinstance(key, int) and class_key(key) in index:  # a name first: a class may be called '12'
            i = index[class_key(key)]
        elif isinstance(key, int) or str(key).strip().isdecimal():
            i = int(key)
            if not 0 <= i < len(names):
                raise ValueError(f"prompts: key {key!r} is not a class index (0-{len(names) - 1}) of {names}.")
        else:
            import difflib

            close = difflib.get_close_matches(class_key(key), list(index), n=1, cutoff=0)
            raise ValueError(f"prompts: key {key!r} matches no class of {names}; the closest class is "
                             f"{names[index[close[0]]]!r}. Keys are class names (any case) or class indices.")
        out[i] = prompt
    return out
