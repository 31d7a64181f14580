"""ultralytics-dsmoe: the DS-MoE defect detector as an Ultralytics YOLO plugin.

Importing this package registers the DS-MoE blocks with the Ultralytics model-YAML parser and installs the
plugin's few, guarded patches (``ultralytics_dsmoe.patches``). After ``pip install`` this happens automatically
whenever Ultralytics loads (``ultralytics_dsmoe_hook``), so users never import it themselves.
"""

from ultralytics_dsmoe import patches
from ultralytics_dsmoe.meta import __version__

patches.install()

__all__ = ("__version__", "patches")
