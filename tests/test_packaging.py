"""The wheel ships cfg/ and datasets/ inside the package plus the autoload .pth (built offline, no isolation)."""

import shutil
import subprocess
import sys
import zipfile

from conftest import REPO

SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "ultralytics_dsmoe_hook.py", "ultralytics_dsmoe",
           "cfg", "datasets")


def test_wheel_contents(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("ultralytics_dsmoe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"ultralytics_dsmoe/{p.relative_to(REPO).as_posix()}" for d in ("cfg", "datasets")
               for p in (REPO / d).rglob("*.yaml")}
    assert shipped and shipped <= names
    assert {"ultralytics_dsmoe.pth", "ultralytics_dsmoe_hook.py", "ultralytics_dsmoe/patches/parser.py"} <= names
    pth = zipfile.ZipFile(wheel).read("ultralytics_dsmoe.pth").decode()
    assert pth.strip() == "import ultralytics_dsmoe_hook; ultralytics_dsmoe_hook.autoload()"


def test_setup_fails_loudly_without_the_private_editable_hook(tmp_path):
    """setup.py relies on setuptools' private editable_wheel._install_namespaces: without it, a clear build error."""
    code = ("import sys, setuptools.command.editable_wheel as e; del e.editable_wheel._install_namespaces; "
            f"sys.argv = ['setup.py', '--version']; import runpy; runpy.run_path({str(REPO / 'setup.py')!r})")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no editable_wheel._install_namespaces" in r.stderr, r.stderr[-2000:]
