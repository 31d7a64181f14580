"""Model-YAML parser: DS-MoE block names resolve in ``ultralytics.nn.tasks`` and ``parse_model`` applies their channel
rules (``ultralytics_dsmoe.nn.BLOCKS``), passes path-like string arguments through, and explains unknown names."""

from __future__ import annotations

from typing import Callable

from ultralytics.nn import tasks
from ultralytics.utils import LOGGER
from ultralytics.utils.ops import make_divisible

from ultralytics_dsmoe.nn import BLOCKS, RENAMED

from ultralytics_dsmoe.guard import MARK, PatchError, is_patched, source_of


def yaml_blocks() -> dict[str, type]:
    """Name -> class of every block a model YAML may use, old names included (``nn.RENAMED``)."""
    names = {name: b.cls for name, b in BLOCKS.items() if b.rule is not None}
    return names | {old: BLOCKS[new].cls for old, new in RENAMED.items()}


def channel_rules() -> dict[type, Callable]:
    """The branch added to ``parse_model`` calls ``rules[m](m, ch, f, args, width, max_channels) -> (c2, args)``."""

    def bind(rule):
        def apply(m, ch, f, args, width, max_channels):
            c1 = [ch[x] for x in f] if isinstance(f, list) else ch[f]
            return rule(m, c1, args, lambda c: make_divisible(min(c, max_channels) * width, 8))

        return apply

    return {b.cls: bind(b.rule) for b in BLOCKS.values() if b.rule is not None}


# The anchored edits to parse_model: a plugin branch before the first stock channel rule; path-like string args
# (e.g. '/abs/mobile_sam.pt') passed through verbatim instead of crashing ast.literal_eval with SyntaxError; and block
# names resolved by ``resolve_block``, which explains an unknown name instead of a bare KeyError.
PARSE_MODEL_EDITS = (
    (
        "        if m in base_modules:\n",
        "        if m in _dsmoe_channel_rules:  # ultralytics-dsmoe plugin blocks\n"
        "            c2, args = _dsmoe_channel_rules[m](m, ch, f, args, width, max_channels)\n"
        "        elif m in base_modules:\n",
    ),
    ("with contextlib.suppress(ValueError):", "with contextlib.suppress(ValueError, SyntaxError):"),
    ("            else globals()[m]\n", "            else _dsmoe_resolve(m, globals(), i)\n"),  # unknown names: a clear error
)


def patched_parse_model(parse_model: Callable) -> Callable:
    """Return ``parse_model`` recompiled with ``PARSE_MODEL_EDITS`` in its own module globals."""
    src = source_of(parse_model)
    for anchor, replacement in PARSE_MODEL_EDITS:
        if src.count(anchor) != 1:
            raise PatchError(f"parse_model no longer contains exactly one {anchor.strip()!r}")
        src = src.replace(anchor, replacement)
    lineno = parse_model.__code__.co_firstlineno
    code = compile("\n" * (lineno - 1) + src, parse_model.__code__.co_filename, "exec")
    namespace = {}
    exec(code, parse_model.__globals__, namespace)  # noqa: S102 - Ultralytics' own source with the anchored edits
    new = namespace[parse_model.__name__]
    setattr(new, MARK, parse_model)
    return new


class UnknownBlockError(KeyError):
    """A model yaml names a block that neither Ultralytics nor this plugin defines (a KeyError, as before)."""

    def __str__(self):
        return str(self.args[0])


def resolve_block(name: str, namespace: dict, row: int):
    """``namespace[name]``, or an ``UnknownBlockError`` naming the row, close matches and the plugin's blocks."""
    if name in namespace:
        return namespace[name]
    import difflib

    from torch import nn

    layers = [k for k, v in namespace.items() if isinstance(v, type) and issubclass(v, nn.Module)]
    close = difflib.get_close_matches(name, layers, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise UnknownBlockError(
        f"Unknown block '{name}' in row {row} of the model yaml.{hint} DS-MoE blocks: {', '.join(yaml_blocks())}. "
        "Other names must be Ultralytics blocks (as in ultralytics/nn/tasks.py), 'nn.<torch.nn layer>' or "
        "'torchvision.ops.<op>'. If a DS-MoE block is missing, the plugin is not loaded: check that "
        "ultralytics-dsmoe is installed in this environment and ULTRALYTICS_DSMOE_AUTOLOAD is not 0."
    )


def register_names(module=tasks) -> None:
    """Make every block resolvable by name in the parser's globals, never shadowing another object.

    A current name that Ultralytics already defines is an error; an old name (``nn.RENAMED``) that Ultralytics now
    defines is left to Ultralytics, with a warning, since old YAMLs using it then build Ultralytics' block."""
    for name, cls in yaml_blocks().items():
        existing = getattr(module, name, None)
        if existing is not None and existing is not cls and getattr(existing, "__module__", "") != cls.__module__:
            if name in RENAMED:
                LOGGER.warning(f"ultralytics-dsmoe: '{name}' is now Ultralytics' own block; model YAMLs written for "
                               f"ultralytics-dsmoe 0.1.0 must name the DS-MoE block '{RENAMED[name]}'.")
                continue
            raise PatchError(f"'{name}' already exists in {module.__name__} as {existing!r}; refusing to overwrite it")
        setattr(module, name, cls)
    module._dsmoe_channel_rules = channel_rules()
    module._dsmoe_resolve = resolve_block


def install() -> None:
    register_names()
    if not is_patched(tasks.parse_model):
        tasks.parse_model = patched_parse_model(tasks.parse_model)
