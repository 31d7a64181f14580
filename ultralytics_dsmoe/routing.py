"""``dsmoe routing``: which experts does a trained DS-MoE model use, for which defect class?

Runs a checkpoint over a split of its dataset (letterboxed like validation) and records, from the first SparseMoE
block's ``last_routing``, the k experts chosen for every routed unit: each image (eqs. 20-21), or each region of the
block's s x s grid (``regions``). A unit holds class c when the centre of a class-c box lies in it, and is
``background`` when it holds none. Writes ``routing.json`` and ``routing.png`` (plus ``regions.png`` for
per-region routing):

- usage[c, e]: the fraction of units holding class c that were routed to expert e (each row sums to k);
- class-expert NMI: the mutual information between a routing slot's class and its expert, normalised by the mean
  of the two entropies (0 = experts ignore the class, 1 = each class has its own experts); defect-expert NMI: the
  same over the units holding a defect only (do different defects get different experts, rather than background
  and defects?). Each comes with its chance level: the mean NMI with the classes shuffled among the units, which
  a finite split scores above 0 even when routing ignores the class (~0.04 for 61 images routed at random,
  k = 5 of 32);
- load: each expert's share f_e of all routing slots, the number of experts used, the largest share, the
  normalised entropy H(f) / log(Ne) (1 = perfectly balanced) and the Switch balance loss Ne * sum_e f_e * P_e
  (1 = balanced, Ne / k = all units on the same k experts);
- expert similarity: the mean pairwise cosine similarity of all Ne experts' outputs on the same inputs
  (``SparseMoE.expert_similarity``; 1 = interchangeable experts).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F


@torch.no_grad()
def routing_report(weights: str, data: str, split: str = "val", imgsz: int = 640, batch: int = 8,
                   device: str = "cpu", out: Path | None = None) -> dict:
    """Per-class expert usage and load balance of the first SparseMoE block; also saved to ``out`` when given."""
    from ultralytics import YOLO
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils.torch_utils import select_device

    from ultralytics_dsmoe.nn.moe import SparseMoE, switch_loss
    from ultralytics_dsmoe.patches.trainer import recorded_gamma
    from ultralytics_dsmoe.util import class_list

    if not Path(weights).is_file():
        raise FileNotFoundError(f"no checkpoint {weights}")
    dev = select_device(device, verbose=False)
    model = YOLO(weights).model.float().eval().to(dev)
    moe = next((m for m in model.modules() if isinstance(m, SparseMoE)), None)
    if moe is None:
        raise ValueError(f"{weights} has no SparseMoE block: there is no routing to report.")
    d = check_det_dataset(data)
    if not d.get(split):
        raise ValueError(f"{data} has no '{split}' split; it has {[s for s in ('train', 'val', 'test') if d.get(s)]}")
    classes = class_list(d["names"])
    if classes != class_list(model.names):
        raise ValueError(f"{data} names the classes {classes}, but {weights} was trained on {class_list(model.names)}")
    if d.get("gamma") is None and (gamma := recorded_gamma(model)) is not None:  # as `yolo val` does
        d = {**d, "gamma": gamma}
    names = [*classes, "background"]
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "rect": False, "cache": False})
    dataset = build_yolo_dataset(cfg, d[split], batch, d, mode="val", stride=int(model.stride.max()))
    seen = {}  # the block's inputs [F_b, T_hat], for the expert-similarity probe
    hook = moe.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    present, chosen = [], []  # per batch: (U, nc + 1) classes held and (U, Ne) experts picked, per routed unit
    prob_sum, images, similarity, first = torch.zeros(moe.ne), 0, [], None
    for b in build_dataloader(dataset, batch, workers=0, shuffle=False):
        model(b["img"].to(dev).float() / 255)
        probs, idx = (t.cpu() for t in moe.last_routing)  # (U, Ne), (U, k): U = B s^2 routed units
        chosen.append(F.one_hot(idx, moe.ne).sum(1).float())  # (U, Ne) 0/1
        present.append(unit_classes(b, len(names) - 1, moe.regions, seen["x"][0].shape[-2:]))  # (U, nc + 1) 0/1
        prob_sum += probs.float().sum(0)
        images += len(b["img"])
        similarity.append(moe.expert_similarity(*seen["x"]).item())
        first = first or (b["img"][:4], idx.view(len(b["img"]), -1, moe.k)[:4, :, 0])  # a few images, top-1 experts
    hook.remove()
    present, chosen = torch.cat(present), torch.cat(chosen)  # (U, nc + 1), (U, Ne)
    usage, per_class, slots, units = present.T @ chosen, present.sum(0), chosen.sum(0), len(chosen)
    defect = present[:, -1] == 0  # units holding at least one box centre
    share = slots / slots.sum()  # f_e
    entropy = -(share[share > 0] * share[share > 0].log()).sum().item() / math.log(moe.ne)
    report = {
        "weights": str(weights), "split": split, "images": images, "regions": moe.regions, "units": units,
        "experts": moe.ne, "k": moe.k, "experts_used": int((slots > 0).sum()), "max_share": share.max().item(),
        "entropy": entropy, "switch_loss": switch_loss(share, prob_sum / units).item(),
        "class_expert_nmi": nmi(usage), "class_expert_nmi_chance": chance_nmi(present, chosen),
        "defect_expert_nmi": nmi(present[defect, :-1].T @ chosen[defect]),
        "defect_expert_nmi_chance": chance_nmi(present[defect, :-1], chosen[defect]),
        "expert_similarity": sum(similarity) / len(similarity),
        "share": share.tolist(),
        "usage": {n: (usage[c] / per_class[c].clamp(min=1)).tolist() for c, n in enumerate(names) if per_class[c]},
        "units_per_class": {n: int(per_class[c]) for c, n in enumerate(names)},
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "routing.json").write_text(json.dumps(report, indent=2))
        plot(report, out / "routing.png")
        if moe.regions > 1:
            plot_regions(*first, moe.regions, out / "regions.png")
    return report


def unit_classes(batch: dict, nc: int, s: int, hw) -> torch.Tensor:
    """(U, nc + 1) 0/1: which classes have a box centre in each routed unit (images, or regions of an s x s grid
    over the block's (H, W) map, as ``SparseMoE`` cuts it); the last column marks units holding no box centre."""
    n, (h, w) = len(batch["img"]), (int(v) for v in hw)
    gh, gw = -(-h // s), -(-w // s)  # cells per region, the map padded to whole regions
    xc, yc = batch["bboxes"][:, 0], batch["bboxes"][:, 1]  # normalised box centres on the letterboxed image
    row = (yc * h / gh).long().clamp(0, s - 1)
    col = (xc * w / gw).long().clamp(0, s - 1)
    unit = batch["batch_idx"].long() * s * s + row * s + col
    present = torch.zeros(n * s * s, nc + 1)
    present[unit, batch["cls"].view(-1).long()] = 1
    present[:, nc] = present[:, :nc].sum(1) == 0
    return present


def nmi(joint: torch.Tensor) -> float:
    """Normalised mutual information of a (classes, experts) table of co-occurrence counts: I / mean(H_c, H_e)."""
    p = joint / joint.sum().clamp(min=1e-12)
    pc, pe = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    info = (p[nz] * (p[nz] / (pc @ pe)[nz]).log()).sum()

    def entropy(q):
        q = q[q > 0]
        return -(q * q.log()).sum()

    mean_h = (entropy(pc) + entropy(pe)) / 2
    return max(0.0, (info / mean_h).item()) if mean_h > 0 else 0.0  # I >= 0: clamp float rounding


def chance_nmi(present: torch.Tensor, chosen: torch.Tensor, shuffles: int = 20) -> float:
    """The NMI that routing blind to the class scores on these units: the mean of ``nmi`` with the rows of the
    (U, classes) table ``present`` shuffled among the U units, whose (U, Ne) ``chosen`` experts stay put."""
    g = torch.Generator().manual_seed(0)
    return sum(nmi(present[torch.randperm(len(present), generator=g)].T @ chosen) for _ in range(shuffles)) / shuffles


def plot(report: dict, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usage = torch.tensor(list(report["usage"].values()))  # (nc, Ne)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 2.2 + 0.45 * len(usage)), height_ratios=[len(usage), 3])
    im = top.imshow(usage, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    top.set(yticks=range(len(usage)), yticklabels=list(report["usage"]), xticks=range(report["experts"]), ylabel="class",
            title=f"Share of each class's {'regions' if report['regions'] > 1 else 'images'} routed to each expert "
                  f"(k = {report['k']}, {report['units']} units, {report['split']} split; "
                  f"class-expert NMI {report['class_expert_nmi']:.2f}, chance "
                  f"{report['class_expert_nmi_chance']:.2f})")
    fig.colorbar(im, ax=top, fraction=0.02)
    bottom.bar(range(report["experts"]), report["share"], color="C1")
    bottom.axhline(1 / report["experts"], color="k", lw=0.8, ls="--", label="balanced")
    bottom.set(xlabel="expert", ylabel="load share", xlim=(-0.5, report["experts"] - 0.5),
               title=f"{report['experts_used']}/{report['experts']} experts used, max share {report['max_share']:.2f}, "
                     f"normalised entropy {report['entropy']:.2f}, Switch loss {report['switch_loss']:.2f}")
    bottom.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=120)
    plt.close(fig)


def plot_regions(images: torch.Tensor, top1: torch.Tensor, s: int, file: Path) -> None:
    """A few images with their s x s routing grid, each region labelled with its top-1 expert."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.4), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, img, experts in zip(axes[0], images, top1):
        h, w = img.shape[-2:]
        ax.imshow(img.permute(1, 2, 0).numpy())
        for r, e in enumerate(experts.tolist()):
            y, x = divmod(r, s)
            ax.add_patch(plt.Rectangle((x * w / s, y * h / s), w / s, h / s, color=cmap(e % 20), alpha=0.35))
            ax.text((x + 0.5) * w / s, (y + 0.5) * h / s, str(e), ha="center", va="center", fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"Top-1 expert of each region ({s} x {s} grid)")
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="dsmoe routing", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a trained DS-MoE checkpoint (best.pt)")
    p.add_argument("--data", required=True, help="its data yaml")
    p.add_argument("--split", default="val")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("routing"))
    a = p.parse_args(argv)
    report = routing_report(a.model, a.data, a.split, a.imgsz, a.batch, a.device, a.out)
    print(json.dumps({k: v for k, v in report.items() if k not in {"usage", "share"}}, indent=2))
    return report


if __name__ == "__main__":
    main()
