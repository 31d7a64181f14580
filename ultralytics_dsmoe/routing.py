"""``dsmoe routing``: which experts does a trained DS-MoE model use, for which defect class?

Runs a checkpoint over a split of its dataset (letterboxed like validation) and records, from each SparseMoE block's
``last_routing``, the k experts chosen for every image (routing is per image, eqs. 20-21). Writes
``routing.json`` and ``routing.png``:

- usage[c, e]: the fraction of images containing class c that were routed to expert e (each row sums to k);
- load: each expert's share f_e of all routing slots, the number of experts used, the largest share, the
  normalised entropy H(f) / log(Ne) (1 = perfectly balanced) and the Switch balance loss Ne * sum_e f_e * P_e
  (1 = balanced, Ne / k = all images on the same k experts).
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

    dev = select_device(device, verbose=False)
    model = YOLO(weights).model.float().eval().to(dev)
    moe = next((m for m in model.modules() if isinstance(m, SparseMoE)), None)
    if moe is None:
        raise ValueError(f"{weights} has no SparseMoE block: there is no routing to report.")
    d = check_det_dataset(data)
    names = d["names"]
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch, "rect": False, "cache": False})
    dataset = build_yolo_dataset(cfg, d[split], batch, d, mode="val", stride=int(model.stride.max()))
    usage = torch.zeros(len(names), moe.ne)  # (nc, Ne) routed images per class and expert
    per_class = torch.zeros(len(names))  # (nc,) images containing each class
    slots, prob_sum, images = torch.zeros(moe.ne), torch.zeros(moe.ne), 0
    for b in build_dataloader(dataset, batch, workers=0, shuffle=False):
        model(b["img"].to(dev).float() / 255)
        probs, idx = (t.cpu() for t in moe.last_routing)  # (B, Ne), (B, k)
        chosen = F.one_hot(idx, moe.ne).sum(1).float()  # (B, Ne) 0/1
        present = torch.zeros(len(chosen), len(names))
        present[b["batch_idx"].long(), b["cls"].view(-1).long()] = 1  # (B, nc)
        usage += present.T @ chosen
        per_class += present.sum(0)
        slots += chosen.sum(0)
        prob_sum += probs.float().sum(0)
        images += len(chosen)
    share = slots / slots.sum()  # f_e
    entropy = -(share[share > 0] * share[share > 0].log()).sum().item() / math.log(moe.ne)
    report = {
        "weights": str(weights), "split": split, "images": images, "experts": moe.ne, "k": moe.k,
        "experts_used": int((slots > 0).sum()), "max_share": share.max().item(), "entropy": entropy,
        "switch_loss": switch_loss(share, prob_sum / images).item(), "share": share.tolist(),
        "usage": {names[c]: (usage[c] / per_class[c].clamp(min=1)).tolist() for c in range(len(names))},
        "images_per_class": {names[c]: int(per_class[c]) for c in range(len(names))},
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "routing.json").write_text(json.dumps(report, indent=2))
        plot(report, out / "routing.png")
    return report


def plot(report: dict, file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usage = torch.tensor(list(report["usage"].values()))  # (nc, Ne)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 2.2 + 0.45 * len(usage)), height_ratios=[len(usage), 3])
    im = top.imshow(usage, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    top.set(yticks=range(len(usage)), yticklabels=list(report["usage"]), xticks=range(report["experts"]), ylabel="class",
            title=f"Share of each class's images routed to each expert (k = {report['k']}, {report['images']} images, "
                  f"{report['split']} split)")
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
