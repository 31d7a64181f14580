"""The embedded default dataset: deterministic, valid YOLO labels, all four classes across scales."""

import numpy as np

from ultralytics_dsmoe.data.synthetic import NAMES, generate, make_image


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic(tmp_path):
    a, b, c = (generate(tmp_path / n, seed=s, train=4, val=2, imgsz=96) for n, s in (("a", 3), ("b", 3), ("c", 4)))
    ta, tb, tc = _tree(a), _tree(b), _tree(c)
    assert len([k for k in ta if k.endswith(".png")]) == 6
    assert ta == tb
    assert {k: v for k, v in ta.items() if k.endswith(".png")} != {k: v for k, v in tc.items() if k.endswith(".png")}


def test_labels_are_valid_yolo_and_cover_classes_and_scales():
    classes, areas = set(), []
    for i in range(40):
        img, labels = make_image(0, "train", i, imgsz=128)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert 1 <= len(labels) <= 4
        for c, x, y, w, h in labels:
            assert 0 <= c < len(NAMES) and 0 < w <= 1 and 0 < h <= 1
            assert 0 <= x - w / 2 + 1e-9 and x + w / 2 <= 1 + 1e-9 and 0 <= y - h / 2 + 1e-9 and y + h / 2 <= 1 + 1e-9
            classes.add(c)
            areas.append(w * h)
    assert classes == set(range(len(NAMES)))
    assert min(areas) < 0.005 and max(areas) > 0.05  # pinholes to creases: the scale spread the paper targets


def test_splits_differ():
    assert not np.array_equal(make_image(0, "train", 0, 64)[0], make_image(0, "val", 0, 64)[0])


def test_shipped_yaml_generates_on_first_use(tmp_path, monkeypatch):
    """`data=synthetic-defects.yaml` builds the set through its `download:` script, offline, under datasets_dir."""
    from ultralytics.data import utils as data_utils

    monkeypatch.setattr(data_utils, "DATASETS_DIR", tmp_path)
    monkeypatch.chdir(tmp_path)
    data = data_utils.check_det_dataset("synthetic-defects.yaml")
    assert data["nc"] == len(NAMES) and tuple(data["names"].values()) == NAMES
    root = tmp_path / "dsmoe-synthetic-defects"
    assert len(list((root / "images" / "train").glob("*.png"))) == 96
    assert len(list((root / "labels" / "val").glob("*.txt"))) == 32
