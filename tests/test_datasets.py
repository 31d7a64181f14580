"""Dataset yamls and their release converters: VOC, COCO, DeepPCB and YOLO releases become checked YOLO sets."""

import json
import shutil
from pathlib import Path

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


def image(path, w=64, h=48, channels=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, channels)[:2 if channels == 1 else 3], 128, np.uint8))


def voc(path, filename, objects, size=(64, 48)):
    """A VOC xml; objects are ``(name, xmin, ymin, xmax, ymax)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
                   "</bndbox></object>" for n, a, b, c, d in objects)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
                    f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>", encoding="utf-8")


def pku_release(root):
    """PKU-Market-PCB's PCB_DATASET/: ``Annotations/<Class>/*.xml`` + ``images/<Class>/*.jpg`` (10 images of two
    classes: a background, clipping, a degenerate box), ``rotation/<Class>_rotation/`` (rotated copies under the same
    names, 48x64: not annotated) and ``PCB_USED/`` (the defect-free template boards)."""
    for i in range(1, 6):
        for cls, folder in (("missing_hole", "Missing_hole"), ("spur", "Spur")):
            stem = f"{i:02d}_{cls}_{i:02d}"
            image(root / "PCB_DATASET/images" / folder / f"{stem}.jpg")
            image(root / "PCB_DATASET/rotation" / f"{folder}_rotation" / f"{stem}.jpg", 48, 64)
            voc(root / "PCB_DATASET/Annotations" / folder / f"{stem}.xml", f"{stem}.jpg", [(cls, 8, 12, 24, 36)])
    voc(root / "PCB_DATASET/Annotations/Missing_hole/01_missing_hole_01.xml", "01_missing_hole_01",  # no extension
        [("Missing_Hole", -10, -5, 32, 60), ("spur", 70, 10, 80, 20)], size=(0, 0))  # clipped, dropped; size by PIL
    voc(root / "PCB_DATASET/Annotations/Spur/02_spur_02.xml", "02_spur_02.jpg", [])  # background
    for board in ("01", "04"):
        image(root / "PCB_DATASET/PCB_USED" / f"{board}.JPG", 96, 72)
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


def image_sizes(out) -> set:
    return {cv2.imread(str(p)).shape[1::-1] for p in out.glob("images/*/*")}


def test_voc_labels_clipping_backgrounds_and_seeded_split(tmp_path):
    release = pku_release(tmp_path)
    out = prepare(shipped("pcb", tmp_path / "a"), release)
    rows = by_stem(out)
    assert len(rows) == 10  # the annotated images only: no rotated copy, no template board
    assert image_sizes(out) == {(64, 48)}  # the images/ originals, never their rotation/ copies
    np.testing.assert_allclose(rows["03_spur_03"], [[4, 0.25, 0.5, 0.25, 0.5]], atol=1e-6)  # box 8,12,24,36 in 64x48
    np.testing.assert_allclose(rows["01_missing_hole_01"], [[0, 0.25, 0.5, 0.5, 1.0]], atol=1e-6)  # clipped, 1 dropped
    assert rows["02_spur_02"] == []  # background kept with an empty label file
    assert counts(out) == {"train": (8, 8), "val": (1, 1), "test": (1, 1)}
    again = prepare(shipped("pcb", tmp_path / "b"), release)
    assert labels(again) == labels(out)  # deterministic split and labels
    other = prepare({**shipped("pcb", tmp_path / "c"), "seed": 7, "split": [0.6, 0.2, 0.2]}, release)
    assert counts(other) == {"train": (6, 6), "val": (2, 2), "test": (2, 2)}


NEU_CLASSES = ("crazing", "pitted_surface", "rolled-in_scale")  # rolled-in_scale, as NEU-DET's xml name it


def neu_release(root, kaggle: bool):
    """NEU-DET/ with 4 grey 32x32 images per class: the original ``ANNOTATIONS/*.xml`` + ``IMAGES/*.jpg`` (flat, no
    split), or Kaggle's ``{train,validation}/annotations/*.xml`` + ``{train,validation}/images/<class>/*.jpg``."""
    for cls in NEU_CLASSES:
        for i in range(1, 5):
            stem, split = f"{cls}_{i}", "train" if i < 4 else "validation"
            ann, img = (f"{split}/annotations", f"{split}/images/{cls}") if kaggle else ("ANNOTATIONS", "IMAGES")
            image(root / "NEU-DET" / img / f"{stem}.jpg", 32, 32, channels=1)
            voc(root / "NEU-DET" / ann / f"{stem}.xml", f"{stem}.jpg", [(cls, 0, 0, 16, 8)], size=(32, 32))
    return root / "NEU-DET"


def test_neu_original_release_is_split_by_seed(tmp_path):
    out = prepare(shipped("neu-det", tmp_path / "out"), neu_release(tmp_path, kaggle=False))
    assert counts(out) == {"train": (10, 10), "val": (1, 1), "test": (1, 1)}
    rows = by_stem(out)
    np.testing.assert_allclose(rows["rolled-in_scale_2"], [[4, 0.25, 0.125, 0.5, 0.25]], atol=1e-6)
    assert {stem: r[0][0] for stem, r in rows.items() if stem.endswith("_1")} == {
        "crazing_1": 0, "pitted_surface_1": 3, "rolled-in_scale_1": 4}


def test_neu_kaggle_release_keeps_train_and_validation(tmp_path):
    out = prepare(shipped("neu-det", tmp_path / "out"), neu_release(tmp_path, kaggle=True))
    assert counts(out) == {"train": (9, 9), "val": (3, 3), "test": (0, 0)}
    assert {stem for split, stem in labels(out) if split == "val"} == {f"{c}_4" for c in NEU_CLASSES}


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


def aluminum_release(root):
    """The GitHub mirror of the Baidu aluminum set (AluDefectDetector-master/): ``dataset/aluminum/images/<n>.jpg``,
    ``annotations/train.json`` (all 10 images) and ``valid.json`` (6 of them again, renumbered, same boxes), beside
    the repository's own files: IDE xml under ``.idea/`` and a derived ``yolo_dataset/`` (copies at another size)."""
    repo, cats = root / "AluDefectDetector-master", [{"supercategory:": "zhe_zhou", "id": 4, "name": "zhe_zhou"}]
    ims = [{"id": i + 1, "file_name": f"/home/aistudio/data/aluminum/images/{i}.jpg", "width": 64, "height": 48}
           for i in range(10)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 4, "bbox": [8, 12, 16, 24], "iscrowd": 0}
            for i in range(10)]
    for i in range(10):
        image(repo / "dataset/aluminum/images" / f"{i}.jpg")
        split = "train" if i < 8 else "val"
        image(repo / "dataset/aluminum/yolo_dataset/images" / split / f"{i}.jpg", 32, 24)
        (repo / "dataset/aluminum/yolo_dataset/labels" / split).mkdir(parents=True, exist_ok=True)
        (repo / "dataset/aluminum/yolo_dataset/labels" / split / f"{i}.txt").write_text("3 0.5 0.5 0.1 0.1\n")
    coco(repo / "dataset/aluminum/annotations/train.json", ims, anns, cats)
    renumbered = [{**im, "id": k + 1} for k, im in enumerate(ims[3:9])]
    coco(repo / "dataset/aluminum/annotations/valid.json", renumbered,
         [{**a, "id": k + 1, "image_id": k + 1} for k, a in enumerate(anns[3:9])], cats)
    (repo / ".idea").mkdir()
    (repo / ".idea/misc.xml").write_text('<?xml version="1.0"?>\n<project version="4"><component name="x"/></project>')
    (repo / "alu_data.yaml").write_text("train: yolo_dataset/images/train\nval: yolo_dataset/images/val\nnc: 4\n")
    return repo


def test_aluminum_valid_json_repeating_train_is_not_a_held_out_split(tmp_path, caplog):
    """valid.json lists train.json's images again: each image is kept once, and the set is split 8:1:1 by seed."""
    with caplog.at_level("INFO", logger="ultralytics"):
        out = prepare(shipped("aluminum", tmp_path / "out"), aluminum_release(tmp_path))
    assert counts(out) == {"train": (8, 8), "val": (1, 1), "test": (1, 1)}
    assert sorted(stem for _, stem in labels(out)) == [str(i) for i in range(10)]  # each image once, in one split
    assert image_sizes(out) == {(64, 48)}  # the release's images, not the derived yolo_dataset copies
    np.testing.assert_allclose(by_stem(out)["5"], [[3, 0.25, 0.5, 0.25, 0.5]], atol=1e-6)  # COCO boxes, not YOLO's
    assert "not held out (6 val images repeat train)" in caplog.text and "10 images are split" in caplog.text
    valid = tmp_path / "AluDefectDetector-master/dataset/aluminum/annotations/valid.json"
    coco_json = json.loads(valid.read_text())
    coco_json["annotations"][2]["bbox"] = [0, 0, 32, 24]  # image 5 again, with another box
    valid.write_text(json.dumps(coco_json))
    with caplog.at_level("WARNING", logger="ultralytics"):
        again = prepare(shipped("aluminum", tmp_path / "again"), valid.parents[3])
    assert "1 images are listed in two splits with different boxes; the first kept" in caplog.text
    assert labels(again) == labels(out)  # train.json's box kept


def deeppcb_release(root):
    """The DeepPCB repository (DeepPCB-master/): 6 pairs in ``PCBData/group00041/00041{,_not}/``, 4 listed in
    ``PCBData/trainval.txt`` and 2 in ``test.txt`` (no final newline), "x1 y1 x2 y2 type" boxes (space or comma), beside
    the annotation tool's ``tools/`` (its own ``examples/test.txt`` of placeholder absolute paths and example pairs)
    and ``evaluation/`` (scripts, ``readme.txt``, ``gt.zip``)."""
    repo, data = root / "DeepPCB-master", root / "DeepPCB-master/PCBData"
    for i in range(6):
        stem = f"0004100{i}"
        image(data / "group00041/00041" / f"{stem}_test.jpg", 64, 64)
        image(data / "group00041/00041" / f"{stem}_temp.jpg", 64, 64)
        (data / "group00041/00041_not").mkdir(parents=True, exist_ok=True)
        (data / "group00041/00041_not" / f"{stem}.txt").write_text("8 16 24 48 6\n0,0,32,32,1")
    lines = [f"group00041/00041/0004100{i}.jpg group00041/00041_not/0004100{i}.txt" for i in range(6)]
    (data / "trainval.txt").write_text("\n".join(lines[:4]))
    (data / "test.txt").write_text("\n".join(lines[4:]))
    examples = repo / "tools/examples"
    for i in range(2):
        image(examples / "grouptest/test" / f"1210000{i}_test.jpg", 64, 64)
        image(examples / "grouptest/test" / f"1210000{i}_temp.jpg", 64, 64)
    (examples / "test.txt").write_text("\n".join(f"/absolute/path/to/examples/grouptest/test/1210000{i}.jpg /absolute/"
                                               f"path/to/examples/grouptest/test_not/1210000{i}.txt" for i in range(2)))
    (repo / "tools/README.md").write_text("# PCB Annotation Tool\n")
    (repo / "evaluation").mkdir()
    (repo / "evaluation/readme.txt").write_text("python script.py -g=gt.zip -s=submit.zip\n")
    (repo / "evaluation/script.py").write_text("")
    shutil.make_archive(str(repo / "evaluation/gt"), "zip", data / "group00041/00041_not")
    image(repo / "fig/test.jpg", 64, 64)
    return repo


def test_deeppcb_lists_numeric_types_and_val_carved_from_train(tmp_path, caplog):
    release = deeppcb_release(tmp_path)
    with caplog.at_level("INFO", logger="ultralytics"):
        out = main(["deeppcb.yaml", str(release), "--out", str(tmp_path / "out")])  # shipped name
    assert counts(out) == {"train": (3, 3), "val": (1, 1), "test": (2, 2)}
    rows = labels(out)
    assert {stem for s, stem in rows if s == "test"} == {"00041004_test", "00041005_test"}
    assert not list(out.rglob("*_temp*")) and not list(out.rglob("1210000*"))
    np.testing.assert_allclose(rows["test", "00041004_test"], [[5, 0.25, 0.5, 0.25, 0.5], [0, 0.25, 0.25, 0.5, 0.5]],
                               atol=1e-6)
    assert "DeepPCB: ignored tools/examples/test.txt" in caplog.text
    assert labels(prepare(shipped("deeppcb", tmp_path / "b"), release / "PCBData")) == rows  # PCBData/ alone


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


def cvat_and_ide_xml(release):
    """xml that is not Pascal VOC: a CVAT export (root <annotations>) and an IDE project file."""
    (release / "annotations.xml").write_text('<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1'
                                             '</version><meta/></annotations>\n')
    (release / ".idea").mkdir(exist_ok=True)
    (release / ".idea/workspace.xml").write_text('<?xml version="1.0"?>\n<project version="4"/>\n')


def ide_and_results_json(release):
    """json that is no COCO detection set: a Visual Studio state file (with a byte-order mark), a results list."""
    (release / ".vs").mkdir()
    (release / ".vs/VSWorkspaceState.json").write_text('\ufeff{"ExpandedNodes": [""], "PreviewInSolutionExplorer": '
                                                       'false}', encoding="utf-8")
    (release / "results.json").write_text('[{"image_id": 1, "category_id": 4, "bbox": [1, 1, 2, 2], "score": 0.9}]')


def text_beside_yolo_labels(release):
    """Text files in a YOLO release that are no label files: a README and a class list."""
    (release / "README.dataset.txt").write_text("exported from a labelling tool\nclasses: 6\n")
    (release / "labels/classes.txt").write_text("missing_hole\nmouse_bite\n")


@pytest.mark.parametrize("name, build, stray", [
    ("pcb", pku_release, cvat_and_ide_xml),
    ("aluminum", aluminum_release, ide_and_results_json),
    ("pcb", yolo_release, text_beside_yolo_labels),
])
def test_stray_files_that_match_a_pattern_change_nothing(tmp_path, name, build, stray):
    release = build(tmp_path / "src")
    clean = labels(prepare(shipped(name, tmp_path / "a"), release))
    stray(release)
    assert labels(prepare(shipped(name, tmp_path / "b"), release)) == clean


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


def no_download(*args, **kwargs):
    raise AssertionError("nothing may be downloaded here")


def first_use(tmp_path, monkeypatch, online: bool, download):
    """Ultralytics' data check as on a user's first use: online or not, the download stood in by ``download``, an
    empty datasets_dir under ``tmp_path`` and ``tmp_path`` as the working directory."""
    from ultralytics import utils
    from ultralytics.data import utils as data_utils

    from ultralytics_dsmoe.data import convert

    monkeypatch.setattr(utils, "ONLINE", online)
    monkeypatch.setattr(convert, "safe_download", download)
    monkeypatch.setattr(data_utils, "DATASETS_DIR", tmp_path / "datasets")
    monkeypatch.chdir(tmp_path)
    return data_utils.check_det_dataset


def test_missing_release_says_where_to_get_it(tmp_path, monkeypatch):
    """A release without a stable direct url (NEU-DET) is never downloaded, online or not."""
    check = first_use(tmp_path, monkeypatch, True, no_download)
    with pytest.raises(FileNotFoundError) as e:
        check("neu-det.yaml")
    message = str(e.value)
    for text in ("neu-det.yaml", "http://faculty.neu.edu.cn", "NEU-DET.zip, NEU-DET", str(tmp_path / "datasets"),
                 str(tmp_path), str(REPO / "datasets"), "dsmoe convert neu-det.yaml"):
        assert text in message
    assert not (tmp_path / "datasets" / "dsmoe-neu-det").exists()


DEEPPCB_URL = YAML.load(REPO / "datasets/deeppcb.yaml")["source"]["download"]


def test_online_first_use_downloads_the_release_and_converts_it(tmp_path, monkeypatch):
    """Online, `data=deeppcb.yaml` downloads DeepPCB-master.zip into datasets_dir once, then converts it."""
    calls, github = [], deeppcb_release(tmp_path / "github").parent

    def fake_download(url, file, dir, unzip):  # what GitHub would serve: the repository as one folder in a zip
        calls.append((url, file, dir, unzip))
        return Path(shutil.make_archive(str(dir / Path(file).stem), "zip", github, "DeepPCB-master"))

    check = first_use(tmp_path, monkeypatch, True, fake_download)
    check("deeppcb.yaml")
    assert calls == [(DEEPPCB_URL, "DeepPCB-master.zip", tmp_path / "datasets", False)]
    assert counts(tmp_path / "datasets/dsmoe-deeppcb") == {"train": (3, 3), "val": (1, 1), "test": (2, 2)}
    shutil.rmtree(tmp_path / "datasets/dsmoe-deeppcb")
    check("deeppcb.yaml")  # the kept archive is found: no second download
    assert len(calls) == 1 and (tmp_path / "datasets/dsmoe-deeppcb/images/test").is_dir()


def failed_download(*args, **kwargs):
    raise ConnectionError(f"Download failure for {DEEPPCB_URL}. Retry limit reached.")


@pytest.mark.parametrize("online, download, note", [
    (False, no_download, "Ultralytics is offline (no network, or YOLO_OFFLINE=1); online, it is downloaded"),
    (True, failed_download, "Downloading it failed: Download failure for"),
])
def test_offline_or_failed_download_says_where_to_get_it(tmp_path, monkeypatch, online, download, note):
    check = first_use(tmp_path, monkeypatch, online, download)
    with pytest.raises(FileNotFoundError) as e:
        check("deeppcb.yaml")
    for text in ("deeppcb.yaml (DeepPCB): release not found", note, f"Download it from {DEEPPCB_URL}",
                 "DeepPCB-master.zip", "dsmoe convert deeppcb.yaml"):
        assert text in str(e.value)
    assert not (tmp_path / "datasets" / "dsmoe-deeppcb").exists()


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
    if "download" in data["source"]:  # saved as the first release file, which later lookups find
        assert data["source"]["download"].startswith("https://") and data["source"]["files"][0].endswith(".zip")
    assert "prepare(yaml)" in data["download"] and not data["path"].startswith("/")
