"""The plugin's version, the Ultralytics it supports, and where its shipped configs live (a leaf: imports nothing)."""

from pathlib import Path

__version__ = "0.2.0"
SUPPORTED = "8.4.x"  # the Ultralytics releases whose internals `ultralytics_dsmoe.patches` was checked against

CFG_DIR = Path(__file__).resolve().parent / "cfg"  # wheel layout: cfg/ and datasets/ ship inside the package
DATA_DIR = Path(__file__).resolve().parent / "datasets"
if not CFG_DIR.is_dir():  # source checkout or editable install: the top-level cfg/ and datasets/
    CFG_DIR, DATA_DIR = CFG_DIR.parent.parent / "cfg", DATA_DIR.parent.parent / "datasets"
