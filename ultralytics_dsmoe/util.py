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
    """The CPU for reports, from Linux's /proc/cpuinfo: model name, family/model and widest vector extension, e.g.
    'AMD EPYC, family 23 model 49, AVX2'; else what ``platform`` knows (often only 'x86_64').

    Latency ratios differ between CPUs, and a virtual machine's model name can be as generic as 'AMD EPYC' while the
    host under it changes: dsmoe-n against yolov8s in ONNX Runtime was 1.04-1.07x on an EPYC with AVX-512 and
    1.07-1.17x on one without (family 23, a Zen 2), both reading 'AMD EPYC'."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    info = {k.strip(): v.strip() for k, v in info.items()}
    if "model name" not in info:
        return platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags), "")
    fam = f"family {info['cpu family']} model {info['model']}" if "cpu family" in info and "model" in info else ""
    return ", ".join(part for part in (info["model name"], fam, isa) if part)
