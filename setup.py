"""Build hooks setup.cfg cannot express: ship the top-level cfg/ and datasets/ inside the wheel, and install the
one-line ``ultralytics_dsmoe.pth`` autoload hook for both ``pip install .`` and ``pip install -e .``."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

ROOT = Path(__file__).parent
PTH = "ultralytics_dsmoe.pth"
PTH_LINE = "import ultralytics_dsmoe_hook; ultralytics_dsmoe_hook.autoload()\n"
DATA_DIRS = ("cfg", "datasets")  # top level in the repo, ultralytics_dsmoe/<dir> in the wheel


class BuildPy(build_py):
    def run(self):
        super().run()
        out = Path(self.build_lib)
        for d in DATA_DIRS:
            shutil.copytree(ROOT / d, out / "ultralytics_dsmoe" / d, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (out / PTH).write_text(PTH_LINE)


# PEP 660 editable wheels drop extra build_lib files, and setuptools offers no public hook to add one: the .pth goes
# into the wheel root through `editable_wheel._install_namespaces`, a private method. Guarded like the plugin's
# patches: a setuptools without it fails the build with this message instead of installing without the autoload hook.
if not callable(getattr(editable_wheel, "_install_namespaces", None)):
    raise RuntimeError("ultralytics-dsmoe: this setuptools has no editable_wheel._install_namespaces, so `pip install -e` "
                       "cannot add the autoload .pth; build with setuptools 84 (tested) or use a regular `pip install .`")


class EditableWheel(editable_wheel):
    # (The editable package finds cfg/ and datasets/ next to the sources, see ultralytics_dsmoe/meta.py.)
    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        Path(installation_dir, PTH).write_text(PTH_LINE)


setup(cmdclass={"build_py": BuildPy, "editable_wheel": EditableWheel})
