#!/usr/bin/env bash
# CPU side of the GPU check (issue 17): put what the bare GPU machine lacks into .gpu/ (git-ignored), < 64 MiB in all:
#   - wheels: ultralytics (this machine's version, --no-deps) and ultralytics-thop for Python 3.12, and this package;
#   - the aluminum set, copied as real files (the device tool carries no symlink targets);
#   - the class-prompt embeddings of the aluminum and test class names, precomputed into the Ultralytics config
#     folder .gpu/config
#     (the 83 MB MiniLM wheel does not fit, and the machine cannot download anything).
# Usage, from anywhere:  bash benchmarks/gpu/prepare.sh [path/to/aluminum]   (default ../shared/datasets/aluminum)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=$(realpath "${1:-../shared/datasets/aluminum}")
PY=.venv/bin/python
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data .gpu/config
VERSION=$($PY -c "import ultralytics; print(ultralytics.__version__)")
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .gpu/whl "ultralytics==$VERSION" ultralytics-thop
$PY -m pip wheel -q --no-deps -w .gpu/whl .
mkdir -p .gpu/data/aluminum
cp -r "$DATA/images" "$DATA/labels" "$DATA/data.yaml" .gpu/data/aluminum/  # never the label caches
find .gpu/data -name "*.cache" -delete
YOLO_CONFIG_DIR=$PWD/.gpu/config YOLO_OFFLINE=1 $PY - <<'PYEOF'
from ultralytics.data.utils import check_det_dataset
from ultralytics.nn.tasks import DetectionModel

from ultralytics_dsmoe.text import fill_text

for names in (check_det_dataset(".gpu/data/aluminum/data.yaml")["names"], ["pinhole", "scratch", "stain", "crease"]):
    fill_text(DetectionModel("dsmoe-n.yaml", nc=len(names), verbose=False), names)  # cached under .gpu/config/Ultralytics/dsmoe
PYEOF
rm -rf .gpu/data/aluminum/labels/*.cache
rm -f .gpu/config/Ultralytics/settings.json  # this machine's paths; the GPU machine writes its own
du -sh .gpu
