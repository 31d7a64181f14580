"""The ``dsmoe`` command: plugin tools beside ``yolo`` (which trains, validates, predicts and exports DS-MoE as is).

    dsmoe benchmark --data aluminum.yaml      DS-MoE vs YOLOv8, same recipe, one results table (--topk: Table 5)
    dsmoe upgrade yolov8s.pt                  add the DS-MoE stages to a trained YOLO checkpoint (starts where it is)
    dsmoe routing --model best.pt --data ...  per-class expert usage and load balance of a trained model
    dsmoe convert pcb.yaml <release>          convert a public dataset release into YOLO format
    dsmoe costs                               params, GFLOPs and the top-k cost sweep, no training
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "benchmark": "ultralytics_dsmoe.benchmark",
    "upgrade": "ultralytics_dsmoe.upgrade",
    "routing": "ultralytics_dsmoe.routing",
    "convert": "ultralytics_dsmoe.data.convert",
    "costs": "ultralytics_dsmoe.costs",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(f"{__doc__.strip()}\n\nUnknown or missing command {argv[:1]}: choose one of {list(COMMANDS)}.", file=sys.stderr)
        return 2
    try:
        importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    # the user's input (a path, a name, a setting, a folder to clear): a message, no traceback
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"dsmoe {argv[0]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
