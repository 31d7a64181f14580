"""Dataset yamls and their release converters: VOC, COCO, DeepPCB and YOLO releases become checked YOLO sets."""

import json
import shutil

import cv2
import numpy as np
import pytest
from ultralytics.utils import YAML

from conftest import REPO
from ultralytics_dsmoe.data.convert import main, prepare

SHIPPED = ("aluminum", "pcb", "neu-det", "deeppcb")


def shipped(name: str, out) -> dict:
    """A shipped data yaml as a dict, writing into ``out``."""
    data = YAML.load(REPO / "datasets" / f"{name}.yaml", append_filename=True)
    return {**data, "path": out}


def image(path, w=64, h=48):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))


def voc(path, filename, objects, size=(64, 48)):
    """A VOC xml; objects are ``(name, xmin, ymin, xmax, ymax)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
                   "</bndbox></object>" for n, a, b, c, d in objects)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>", encoding="utf-8")


def pku_release(root):
    """PKU-Market-PCB layout: 10 images of two classes, a background, clipping, a degenerate box, a decoy image."""
    for i in range(1, 6):
        for cls, folder in (("missing_hole", "Missing_hole"), ("spur", "Spur")):
            stem = f"{i:02d}_{cls}_{i:02d}"
            image(root / "PCB_DATASET/images" / folder / f"{stem}.jpg")
            voc(root / "PCB_DATASET/Annotations" / folder / f"{stem}.xml", f"{stem}.jpg", [(cls, 8, 12, 24, 36)])
    voc(root / "PCB_DATASET/Annotations/Missing_hole/01_missing_hole_01.xml", "01_missing_hole_01",  # no extension
        [("Missing_Hole", -10, -5, 32, 60), ("spur", 70, 10, 80, 20)], size=(0, 0))  # clipped, dropped; size by PIL
    voc(root / "PCB_DATASET/Annotations/Spur/02_spur_02.xml", "02_spur_02.jpg", [])  # background
    image(root / "PCB_DATASET/rotation/Missing_hole_rotation/01_missing_hole_01.jpg", 48, 64)  # same stem, not it
    return root / "PCB_DATASET"


def labels(out) -> dict:
    """``{(split, stem): [[cls, x, y, w, h], ...]}`` of a converted set."""
    return {(p.parent.name, p.stem): [[float(v) for v in line.split()] for line in p.read_text().splitlines()]
            for p in sorted(out.glob("labels/*/*.txt"))}


def counts(out) -> dict:
    return {s: (len(list(out.glob(f"images/{s}/*"))), len(list(out.glob(f"labels/{s}/*.txt"))))
            for s in ("train", "val", "test")}


def by_stem(out) -> dict:
    return {stem: rows for (_, stem), rows in labels(out).items()}


def snapshot(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_voc_labels_clipping_backgrounds_and_seeded_split(tmp_path):
    release = pku_release(tmp_path)
    out = prepare(shipped("pcb", tmp_path / "a"), release)
    rows = by_stem(out)
    assert len(rows) == 10
    np.testing.assert_allclose(rows["03_spur_03"], [[4, 0.25, 0.5, 0.25, 0.5]], atol=1e-6)  # box 8,12,24,36 in 64x48
    np.testing.assert_allclose(rows["01_missing_hole_01"], [[0, 0.25, 0.5, 0.5, 1.0]], atol=1e-6)  # clipped, 1 dropped
    assert rows["02_spur_02"] == []  # background kept with an empty label file
    assert counts(out) == {"train": (8, 8), "val": (1, 1), "test": (1, 1)}
    again = prepare(shipped("pcb", tmp_path / "b"), release)
    assert labels(again) == labels(out)  # deterministic split and labels
    other = prepare({**shipped("pcb", tmp_path / "c"), "seed": 7, "split": [0.6, 0.2, 0.2]}, release)
    assert counts(other) == {"train": (6, 6), "val": (2, 2), "test": (2, 2)}


def test_neu_kaggle_release_keeps_train_and_validation(tmp_path):
    for split, n in (("train", 4), ("validation", 2)):
        for i in range(n):
            stem = f"crazing_{split}{i}"
            image(tmp_path / "NEU-DET" / split / "images/crazing" / f"{stem}.jpg", 32, 32)
            voc(tmp_path / "NEU-DET" / split / "annotations" / f"{stem}.xml", f"{stem}.jpg",
                [("rolled_in_scale", 0, 0, 16, 8)], size=(32, 32))
    out = prepare(shipped("neu-det", tmp_path / "out"), tmp_path / "NEU-DET")
    assert counts(out) == {"train": (4, 4), "val": (2, 2), "test": (0, 0)}
    assert {split for split, _ in labels(out)} == {"train", "val"}
    assert all(stem.startswith(f"crazing_{'train' if s == 'train' else 'validation'}") for s, stem in labels(out))
    np.testing.assert_allclose(by_stem(out)["crazing_train0"], [[4, 0.25, 0.125, 0.5, 0.25]], atol=1e-6)  # alias


def coco(path, images, annotations, categories):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}),
                    encoding="utf-8")


def test_coco_per_split_jsons_names_and_aliases(tmp_path):
    cats = [{"id": 1, "name": "针孔"}, {"id": 2, "name": "Scratch"}, {"id": 3, "name": "ZANG_WU"}]
    for split in ("train", "valid", "test"):
        ims = [{"id": i, "file_name": f"/home/aistudio/{split}_{i}.jpg", "width": 64, "height": 48} for i in range(2)]
        for im in ims:
            image(tmp_path / "roboflow" / split / f"{split}_{im['id']}.jpg")
        anns = [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [8, 12, 16, 24]},
                {"id": 2, "image_id": 0, "category_id": 2, "bbox": [0, 0, 64, 48]},
                {"id": 3, "image_id": 1, "category_id": 3, "bbox": [32, 24, 64, 48]}]  # over the edge: clipped
        coco(tmp_path / "roboflow" / split / "_annotations.coco.json", ims, anns, cats)
    out = prepare(shipped("aluminum", tmp_path / "out"), tmp_path / "roboflow")
    assert counts(out) == {"train": (2, 2), "val": (2, 2), "test": (2, 2)}
    rows = labels(out)
    np.testing.assert_allclose(rows["val", "valid_0"], [[0, 0.25, 0.5, 0.25, 0.5], [1, 0.5, 0.5, 1, 1]], atol=1e-6)
    np.testing.assert_allclose(rows["test", "test_1"], [[2, 0.75, 0.75, 0.5, 0.5]], atol=1e-6)


def test_coco_overlapping_splits_fall_back_to_a_seeded_split(tmp_path):
    """The Baidu aluminum release: valid.json repeats train images; the set is re-split, each image once."""
    ims = [{"id": i, "file_name": f"/home/aistudio/data/aluminum/images/{i}.jpg", "width": 64, "height": 48}
           for i in range(10)]
    anns = [{"id": i, "image_id": i, "category_id": 4, "bbox": [1, 1, 10, 10]} for i in range(10)]
    cats = [{"id": 4, "name": "zhe_zhou"}]
    for i in range(10):
        image(tmp_path / "aluminum/images" / f"{i}.jpg")
    coco(tmp_path / "aluminum/annotations/train.json", ims, anns, cats)
    coco(tmp_path / "aluminum/annotations/valid.json", ims[:6], anns[:6], cats)
    out = prepare(shipped("aluminum", tmp_path / "out"), tmp_path / "aluminum")
    assert counts(out) == {"train": (8, 8), "val": (1, 1), "test": (1, 1)}


def deeppcb_release(root):
    """DeepPCB layout: 6 pairs, 4 in trainval.txt and 2 in test.txt, comma and space separated boxes."""
    data = root / "DeepPCB-master/PCBData"
    for i in range(6):
        stem = f"0004100{i}"
        image(data / "group00041/00041" / f"{stem}_test.jpg", 64, 64)
        image(data / "group00041/00041" / f"{stem}_temp.jpg", 64, 64)
        (data / "group00041/00041_not").mkdir(parents=True, exist_ok=True)
        (data / "group00041/00041_not" / f"{stem}.txt").write_text("8,16,24,48,6\n0 0 32 32 1\n")
    lines = [f"group00041/00041/0004100{i}.jpg group00041/00041_not/0004100{i}.txt" for i in range(6)]
    (data / "trainval.txt").write_text("\n".join(lines[:4]) + "\n")
    (data / "test.txt").write_text("\n".join(lines[4:]) + "\n")
    return root / "DeepPCB-master"


def test_deeppcb_lists_numeric_types_and_val_carved_from_train(tmp_path):
    out = main(["deeppcb.yaml", str(deeppcb_release(tmp_path)), "--out", str(tmp_path / "out")])  # shipped name
    assert counts(out) == {"train": (3, 3), "val": (1, 1), "test": (2, 2)}
    rows = labels(out)
    assert {stem for s, stem in rows if s == "test"} == {"00041004_test", "00041005_test"}
    assert not list(out.rglob("*_temp*"))
    np.testing.assert_allclose(rows["test", "00041004_test"], [[5, 0.25, 0.5, 0.25, 0.5], [0, 0.25, 0.25, 0.5, 0.5]],
                               atol=1e-6)


def yolo_release(root, cls=1):
    for split, n in (("train", 5), ("test", 2)):
        for i in range(n):
            image(root / "images" / split / f"{split}{i}.png")
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{split}{i}.txt").write_text(f"{cls} 0.5 0.5 0.25 0.5\n" if i else "")
    return root


def test_yolo_release_and_its_zip(tmp_path):
    release = yolo_release(tmp_path / "release")
    out = prepare(shipped("pcb", tmp_path / "a"), release)
    assert counts(out) == {"train": (4, 4), "val": (1, 1), "test": (2, 2)}  # val carved from train, test kept
    assert by_stem(out)["test1"] == [[1, 0.5, 0.5, 0.25, 0.5]] and by_stem(out)["test0"] == []
    archive = shutil.make_archive(str(tmp_path / "PCB_DATASET"), "zip", tmp_path, "release")
    assert labels(prepare(shipped("pcb", tmp_path / "b"), archive)) == labels(out)
    with pytest.raises(ValueError, match="class id 6"):
        prepare(shipped("pcb", tmp_path / "c"), yolo_release(tmp_path / "bad", cls=6))
    (tmp_path / "PCB_DATASET.rar").write_bytes(b"Rar!")
    with pytest.raises(ValueError, match="extract it yourself"):
        prepare(shipped("pcb", tmp_path / "d"), tmp_path / "PCB_DATASET.rar")


def test_check_det_dataset_runs_the_download_script(tmp_path, monkeypatch):
    """`data=pcb.yaml` finds PCB_DATASET.zip in datasets_dir and converts it on first use."""
    from ultralytics.data import utils as data_utils

    monkeypatch.setattr(data_utils, "DATASETS_DIR", tmp_path)
    monkeypatch.chdir(tmp_path)
    shutil.make_archive(str(tmp_path / "PCB_DATASET"), "zip", pku_release(tmp_path / "src").parent, "PCB_DATASET")
    data = data_utils.check_det_dataset("pcb.yaml")
    assert data["nc"] == 6 and data["path"] == tmp_path / "dsmoe-pcb"
    for split in ("train", "val", "test"):
        images, label_files = (sorted(p.stem for p in (tmp_path / "dsmoe-pcb" / d / split).iterdir())
                               for d in ("images", "labels"))
        assert images and images == label_files
    assert data["val"] == str(tmp_path / "dsmoe-pcb/images/val")


def test_missing_release_says_where_to_get_it(tmp_path, monkeypatch):
    from ultralytics.data import utils as data_utils

    monkeypatch.setattr(data_utils, "DATASETS_DIR", tmp_path / "datasets")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        data_utils.check_det_dataset("neu-det.yaml")
    message = str(e.value)
    for text in ("neu-det.yaml", "http://faculty.neu.edu.cn", "NEU-DET.zip, NEU-DET", str(tmp_path / "datasets"),
                 str(tmp_path), str(REPO / "datasets"), "dsmoe convert neu-det.yaml"):
        assert text in message
    assert not (tmp_path / "datasets" / "dsmoe-neu-det").exists()


def unknown_label(root):
    voc(root / "PCB_DATASET/Annotations/x/bad.xml", "bad.jpg", [("bogus", 1, 1, 5, 5), ("bogus", 2, 2, 6, 6)])


def corrupt_xml(root):
    (root / "PCB_DATASET/Annotations/x/bad.xml").write_text("<annotation><object><name>spur</name>")


def missing_field(root):
    voc(root / "PCB_DATASET/Annotations/x/bad.xml", "bad.jpg", [("spur", 1, 1, "", 5)])


@pytest.mark.parametrize("breaker, error, match", [
    (unknown_label, ValueError, r"unknown labels \{'bogus': 2\}.*missing_hole.*aliases:"),
    (corrupt_xml, ValueError, r"corrupt VOC annotation .*bad\.xml"),
    (missing_field, ValueError, r"bad\.xml: <bndbox/xmax> is missing"),
])
def test_failed_conversion_leaves_nothing_behind(tmp_path, breaker, error, match):
    release = pku_release(tmp_path / "src")
    image(release / "images/x/bad.jpg")
    (release / "Annotations/x").mkdir(parents=True)
    breaker(tmp_path / "src")
    before = snapshot(tmp_path / "src")
    (tmp_path / "datasets").mkdir()
    with pytest.raises(error, match=match):
        prepare(shipped("pcb", tmp_path / "datasets" / "dsmoe-pcb"), release)
    assert list((tmp_path / "datasets").iterdir()) == []  # no output, no temporary folder
    assert snapshot(tmp_path / "src") == before


def test_bad_box_line_names_file_and_line(tmp_path):
    release = deeppcb_release(tmp_path)
    (release / "PCBData/group00041/00041_not/00041002.txt").write_text("1,2,3,4,5\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"00041002\.txt, line 2: expected 5 fields"):
        prepare(shipped("deeppcb", tmp_path / "out"), release)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_yaml(name):
    data = YAML.load(REPO / "datasets" / f"{name}.yaml")
    names = list(data["names"].values())
    assert data.get("nc", len(names)) == len(names) == len(set(names))
    assert set(names) <= set(YAML.load(REPO / "cfg/prompts.yaml"))
    assert set(data.get("aliases", {}).values()) <= set(names)
    assert data["source"]["url"].startswith("http") and data["source"]["files"]
    assert "prepare(yaml)" in data["download"] and not data["path"].startswith("/")
