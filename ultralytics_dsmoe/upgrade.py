"""``dsmoe upgrade``: add the DS-MoE stages to a trained YOLO checkpoint, starting exactly where it is.

    dsmoe upgrade yolov8s.pt                  -> yolov8s-dsmoe.pt (config dsmoe-v8.yaml at scale s)
    dsmoe upgrade runs/detect/train/weights/best.pt --out line3-dsmoe.pt --data line3.yaml

The upgrade configs (``dsmoe-v8.yaml``, ``dsmoe-11.yaml``) are the YOLO config with the DS-MoE stages inserted on the
P4 path as a residual branch closed by a ``ResidualGate`` (a zero convolution). The inserted rows shift
Ultralytics' ``model.<i>`` names, so weights are mapped by structure, row by row, never by index (``layer_map``):
every source row must meet a target row of the same block type, reading the same inputs, with tensors of the same
shapes. The first row that differs is named in the error. The upgraded model therefore computes exactly what the
source computed (tested to 1e-5 on boxes and scores), and ``yolo train model=<upgraded>.pt`` fine-tunes it through the
stock trainer. The same mapping serves ``yolo train model=dsmoe-v8s.yaml pretrained=yolov8s.pt``
(``ultralytics_dsmoe.patches.transfer``).

The checkpoint keeps the source's class names, ``nc`` and training arguments; its class-prompt embeddings are filled at
upgrade time (``--data`` supplies prompts, else each class name's prompt bank entry or template), so ``predict`` and
``val`` need no text model.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from torch import nn

from ultralytics_dsmoe.nn import ResidualGate
from ultralytics_dsmoe.util import class_list, yaml_rows

CONFIGS = ("dsmoe-v8.yaml", "dsmoe-11.yaml")  # tried in this order when --cfg is not given
STAGES = {  # the paper's ablation columns on a fixed YOLO backbone, in order: each adds to the one before
    "text": "+ text guidance: stages 1-4, 6, 9-10 (Euclidean alignment, a dense conv for the experts, BCE)",
    "hyperbolic": "+ Poincare alignment (stage 5)",
    "experts": "+ sparse experts (stages 7-8)",
    "full": "+ QFocal: the full upgrade",
}


class UpgradeMismatch(ValueError):
    """The source checkpoint's layers do not match the upgrade config's YOLO rows."""


def ablate(d: dict, stages: str) -> dict:
    """An upgrade config dict cut back to one of ``STAGES`` (in place): later columns' stages are replaced by what the
    paper's earlier columns use (Ultralytics' BCE for QFocal, a dense 1x1 CBS for the experts, Euclidean for the
    Poincare ball). The rows stay where they are, so every column maps a source checkpoint alike."""
    order = list(STAGES)
    upto = order.index(stages)
    if upto < order.index("full"):
        d["loss"] = "default"
    for row in yaml_rows(d, "SparseMoE", "HyperbolicAlign"):
        if row[2] == "SparseMoE" and upto < order.index("experts"):
            row[1:] = [1, "Conv", [row[3][0], 1, 1]]
            row[0] = row[0][0]  # the dense conv reads F_b only, not the text
        if row[2] == "HyperbolicAlign" and upto < order.index("hyperbolic"):
            row[3] = [*row[3][:3], "euclidean"]
    return d


def is_upgrade(model) -> bool:
    """Whether a model (DetectionModel) has upgrade gates, i.e. was built from an upgrade config."""
    return any(isinstance(m, ResidualGate) for m in getattr(model, "model", ()))


def added_rows(model) -> set[int]:
    """Rows an upgrade config adds to its YOLO config: each ``ResidualGate`` and the branch rows between its trunk
    input and itself (upgrade configs insert each branch right after the trunk row it reads)."""
    rows = set()
    for m in model.model:
        if isinstance(m, ResidualGate):
            rows |= set(range(m.f[0] + 1, m.i + 1))
    return rows


def inputs(m) -> list[int]:
    """Absolute row indices a layer reads (-1 = the image)."""
    return [m.i - 1 if f == -1 and m.i > 0 else f for f in (m.f if isinstance(m.f, list) else [m.f])]


def describe(model) -> str:
    """A model as its scaled config name: yolov8s.yaml, dsmoe-v8s.yaml."""
    cfg = getattr(model, "yaml", None) or {}
    file = Path(str(cfg.get("yaml_file", "") or getattr(model, "pt_path", "") or "model"))
    scale = cfg.get("scale") or ""
    return file.name if not scale or file.stem.endswith(scale) else f"{file.stem}{scale}{file.suffix}"


def layer_map(source, target, shapes: bool = True) -> dict[int, int]:
    """Source row -> target row holding the same weights, matched by structure.

    Args:
        source: a plain YOLO DetectionModel (no DS-MoE rows).
        target: a model built from an upgrade config.
        shapes: require equal tensor shapes in every row (``dsmoe upgrade``); ``False`` in every row but the head,
            whose class count may differ (Ultralytics' own transfer handles that, as a ``pretrained=`` fine-tune
            does). A trunk of another scale is always an error: silently transferring a fraction of it would train
            a different model than the one asked for.

    Raises:
        UpgradeMismatch: naming the first row that differs and how.
    """
    added = added_rows(target)
    kept = [m for m in target.model if m.i not in added]
    feeds = {m.f[0]: m.i for m in target.model if isinstance(m, ResidualGate)}  # trunk row -> the gate that replaces it
    src, dst = describe(source), describe(target)
    if is_upgrade(source):
        raise UpgradeMismatch(f"{src} already has DS-MoE stages; upgrade the plain YOLO checkpoint it came from.")
    mapping, reads = {}, {-1: -1}  # reads: source row -> the target row its consumers read instead
    for s, t in zip(source.model, kept):
        where = f"{src} row {s.i} ({type(s).__name__}) against {dst} row {t.i} ({type(t).__name__})"
        if type(s).__name__ != type(t).__name__:
            raise UpgradeMismatch(f"{where}: different blocks. Upgrade a checkpoint of the YOLO family the config is "
                                  f"built on ({', '.join(CONFIGS)}), at its own scale.")
        if [reads.get(f) for f in inputs(s)] != inputs(t):
            raise UpgradeMismatch(f"{where}: it reads rows {inputs(s)}, which map to {[reads.get(f) for f in inputs(s)]}, "
                                  f"but the config's row reads {inputs(t)}.")
        a, b = s.state_dict(), t.state_dict()
        if list(a) != list(b):
            raise UpgradeMismatch(f"{where}: different tensors ({sorted(set(a) ^ set(b))[:3]} ...).")
        for name in a if shapes or s is not source.model[-1] else ():
            if a[name].shape != b[name].shape:
                raise UpgradeMismatch(f"{where}: {name} is {tuple(a[name].shape)} against {tuple(b[name].shape)}; is "
                                      "the config at the checkpoint's scale and class count?")
        mapping[s.i] = t.i
        reads[s.i] = feeds.get(t.i, t.i)
    if len(source.model) != len(kept):
        extra = (source.model if len(source.model) > len(kept) else kept)[min(len(source.model), len(kept))]
        raise UpgradeMismatch(f"{src} has {len(source.model)} rows, {dst} {len(kept)} besides its DS-MoE rows; the "
                              f"first row without a partner is {type(extra).__name__} (row {extra.i}).")
    return mapping


def structural_view(source, target, shapes: bool = False):
    """A copy of ``source`` whose rows sit at their target positions (``nn.Identity`` in the added rows), so its
    state_dict keys are the target's: Ultralytics' own ``BaseModel.load`` then transfers it."""
    mapping = layer_map(source, target, shapes)
    view = copy.deepcopy(source)
    rows = {mapping[m.i]: m for m in view.model}
    view.model = nn.Sequential(*(rows.get(i, nn.Identity()) for i in range(len(target.model))))
    return view


def build_target(source, cfg: str, stages: str = "full"):
    """The upgrade config ``cfg`` at the source's scale and class count, cut back to ``stages`` (one of ``STAGES``)."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    d = ablate(yaml_model_load(cfg), stages)
    scale = (getattr(source, "yaml", None) or {}).get("scale") or "n"
    if scale not in d["scales"]:
        raise UpgradeMismatch(f"{describe(source)} has scale '{scale}', which {Path(cfg).name} does not define.")
    d["scale"], d["nc"] = scale, len(source.names)
    if (gamma := (getattr(source, "yaml", None) or {}).get("gamma")) is not None:
        d["gamma"] = gamma  # the source was trained on gamma-corrected images: predict and val apply it to both alike
    return DetectionModel(d, nc=len(source.names), verbose=False)


def upgrade_model(source, cfg: str | None = None, stages: str = "full"):
    """The upgraded DetectionModel for a plain YOLO DetectionModel (weights copied, gates at zero), and the config.

    Without ``cfg`` each of ``CONFIGS`` is tried; the error then lists why each one failed. ``stages`` keeps the
    paper's stages up to that column of ``STAGES`` (``hyperbolic``: text and Poincare alignment, a dense conv for the
    experts, BCE)."""
    if stages not in STAGES:
        raise ValueError(f"unknown stages {stages!r}: choose from {', '.join(STAGES)}")
    errors = []
    for candidate in [cfg] if cfg else CONFIGS:
        try:
            target = build_target(source, candidate, stages)
            view = structural_view(source, target, shapes=True)
        except UpgradeMismatch as e:
            errors.append(str(e))
            continue
        missing, unexpected = target.load_state_dict(view.float().state_dict(), strict=False)
        added = {f"model.{i}." for i in added_rows(target)}
        left = [k for k in missing if not k.startswith(tuple(added))]
        if unexpected or left:  # layer_map compared every row's tensors, so this is an internal error
            raise RuntimeError(f"upgrade left tensors unmapped: {unexpected or left}")
        target.names, target.stride = dict(source.names), source.stride.clone()
        target.args = getattr(source, "args", {})
        return target.eval(), candidate
    raise UpgradeMismatch("Cannot upgrade this checkpoint:\n  " + "\n  ".join(errors))


def upgrade(source: str | Path, out: str | Path | None = None, cfg: str | None = None, data: str | None = None,
            stages: str = "full") -> Path:
    """Write the DS-MoE upgrade of the YOLO checkpoint ``source`` to ``out`` (default: ``<source>-dsmoe.pt``), with
    the stages up to ``stages`` (``STAGES``)."""
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    from ultralytics_dsmoe.text import fill_text

    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"dsmoe upgrade: no checkpoint {source}")
    if source.suffix != ".pt":
        raise UpgradeMismatch(f"{source} is not a trained checkpoint (.pt): an upgrade starts from trained weights.")
    out = Path(out) if out else source.with_name(f"{source.stem}-dsmoe.pt")
    if out.resolve() == source.resolve():
        raise UpgradeMismatch(f"--out {out} is the source checkpoint itself; write the upgrade to another file.")
    try:
        yolo = YOLO(str(source))
    except Exception as e:  # torch.load's and Ultralytics' errors for a truncated or foreign file vary
        raise UpgradeMismatch(f"{source} cannot be read as an Ultralytics checkpoint ({type(e).__name__}: {e}).") from e
    if yolo.task != "detect":
        raise UpgradeMismatch(f"{source} is a '{yolo.task}' model; DS-MoE upgrades detection models.")
    target, cfg = upgrade_model(yolo.model, cfg, stages)
    prompts, root = None, None
    if data:
        from ultralytics.data.utils import check_det_dataset

        d = check_det_dataset(data)
        if class_list(d["names"]) != class_list(target.names):
            raise UpgradeMismatch(f"{data} names the classes {class_list(d['names'])}, but {source.name} was trained "
                                  f"on {class_list(target.names)}.")
        prompts, root = d.get("prompts"), Path(d.get("yaml_file", ".")).parent
    fill_text(target, target.names, prompts, root)
    yolo.model = target
    yolo.ckpt = {"train_args": yolo.ckpt.get("train_args", {}), "epoch": -1, "optimizer": None,
                 "dsmoe_upgrade": {"source": str(source), "config": Path(cfg).name, "stages": stages}}
    out.parent.mkdir(parents=True, exist_ok=True)
    yolo.save(out)
    rows = len(added_rows(target))
    LOGGER.info(f"DS-MoE upgrade: {source} -> {out} ({Path(cfg).name} scale {target.yaml['scale']}, stages: {stages}, "
                f"{rows} rows added, every source tensor mapped, gates at zero: the model computes what the source "
                "did).")
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="dsmoe upgrade", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a trained YOLOv8 or YOLO11 detection checkpoint (.pt)")
    p.add_argument("--out", help="output checkpoint (default: <source>-dsmoe.pt beside it)")
    p.add_argument("--cfg", help=f"upgrade config (default: the first of {', '.join(CONFIGS)} that matches)")
    p.add_argument("--data", help="data yaml whose class prompts to embed (its names must be the checkpoint's)")
    p.add_argument("--stages", choices=list(STAGES), default="full",
                   help="the paper's stages up to this ablation column (default: full): " +
                        "; ".join(f"{k}: {v.removeprefix('+ ')}" for k, v in STAGES.items()))
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return upgrade(a.source, a.out, a.cfg, a.data, a.stages)
    except (UpgradeMismatch, FileNotFoundError) as e:
        raise SystemExit(f"dsmoe upgrade: {e}") from None


if __name__ == "__main__":
    main()
