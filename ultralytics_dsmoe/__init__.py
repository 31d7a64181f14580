"""ultralytics-dsmoe: the DS-MoE defect detector as an Ultralytics YOLO plugin.

Importing this package registers the DS-MoE blocks with the Ultralytics model-YAML parser and installs the
plugin's few, guarded patches (see ``ultralytics_dsmoe.register``). After ``pip install`` this happens
automatically whenever Ultralytics loads (``ultralytics_dsmoe_hook``), so users never import it themselves.
"""

__version__ = "0.1.0"

from ultralytics_dsmoe import register  # noqa: E402  (imports ultralytics.nn and the blocks)

register.install()

__all__ = ("__version__", "register")
