"""Small helpers used across the package: class names, model-yaml access and the CPU's name."""

from __future__ import annotations


def class_key(name) -> str:
    """The form class names are matched in (prompt banks, data-yaml ``prompts:``, dataset labels): trimmed, lower case."""
    return str(name).strip().lower()


def class_phrase(name) -> str:
    """A class name as words for a prompt or a question: ``pitted_surface`` -> ``pitted surface``."""
    return str(name).strip().replace("_", " ")


def class_list(names) -> list:
    """Class names in class order, from Ultralytics' ``{index: name}`` dict or a list."""
    return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)


def model_cfg(model) -> dict:
    """The model-yaml dict of a model (``{}`` for models built without one, e.g. from a checkpoint of another kind)."""
    cfg = getattr(model, "yaml", None)
    return cfg if isinstance(cfg, dict) else {}


def yaml_rows(d: dict, *modules: str) -> list[list]:
    """The rows ``[from, repeats, module, args]`` of a model-yaml dict, backbone then head, whose module is one of
    ``modules`` (the lists themselves: editing one edits ``d``)."""
    return [row for row in d["backbone"] + d["head"] if row[2] in modules]


def cpu_name() -> str:
    """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) ...'), for reports: latency ratios differ between CPUs.
    Linux's /proc/cpuinfo, else what ``platform`` knows (often only 'x86_64')."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
