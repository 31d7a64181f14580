"""Convert a public defect-detection release (Pascal VOC, COCO, DeepPCB or YOLO layout) into a YOLO dataset.

The shipped data yamls (``datasets/aluminum.yaml``, ``pcb.yaml``, ``neu-det.yaml``, ``deeppcb.yaml``) call
``prepare(yaml)`` from their ``download:`` script the first time Ultralytics misses their ``val`` images;
``dsmoe convert pcb.yaml <release>`` does the same for a release stored elsewhere. A release not found locally is
downloaded from the yaml's ``source: download:`` url (only where the release has a stable direct url) when
Ultralytics is online.

Each format reader returns the same record list, ``(image, [(label, x1, y1, x2, y2), ...], (w, h), split)``, with
boxes in the units of ``(w, h)`` (pixels, or ``(1, 1)`` for labels that are already normalised) and ``split`` the
release's own split or None. ``prepare`` maps labels to class ids, clips boxes, assigns splits, then writes
``images/<split>/`` and ``labels/<split>/*.txt`` into a temporary sibling that is renamed into place last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image
from ultralytics.data.utils import img2label_paths
from ultralytics.utils import LOGGER, SETTINGS, YAML
from ultralytics.utils.downloads import safe_download

from ultralytics_dsmoe.patches.offline import is_offline
from ultralytics_dsmoe.util import class_key, class_list

IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
SPLITS = ("train", "val", "test")
SPLIT_WORDS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
DEEPPCB_LISTS = {"trainval.txt": "train", "test.txt": "test"}  # DeepPCB's split lists -> split
Box = tuple[str | int, float, float, float, float]  # (label, x1, y1, x2, y2); int labels: 0-based ids (YOLO releases)
Record = tuple[Path, list[Box], tuple[float, float], str | None]  # (image, boxes, (w, h) of the box units, split)
Item = tuple[Path, list[tuple[int, float, float, float, float]], str | None]  # (image, [(cls, xc, yc, w, h)], split)


# --- release lookup -------------------------------------------------------------------------------------------


def dataset_root(yaml: dict) -> Path:
    """The output folder: ``yaml["path"]``, relative names under the Ultralytics datasets_dir (as Ultralytics does)."""
    path = Path(yaml.get("path") or Path(yaml["yaml_file"]).parent)
    return path if path.is_absolute() else (Path(SETTINGS["datasets_dir"]) / path).resolve()


def find_release(yaml: dict, out: Path) -> Path:
    """The first of ``source: files:`` in datasets_dir, the output's parent, the cwd or the yaml's folder; else the
    release downloaded from ``source: download:`` into the output's parent (datasets_dir) when Ultralytics is online."""
    source, yaml_file = yaml.get("source") or {}, yaml.get("yaml_file")
    folders = [Path(SETTINGS["datasets_dir"]), out.parent, Path.cwd()] + ([Path(yaml_file).parent] if yaml_file else [])
    folders = list(dict.fromkeys(f.resolve() for f in folders))
    for folder in folders:
        for name in source.get("files", []):
            if (folder / name).exists() and (folder / name).resolve() != out:
                return folder / name
    url, note = source.get("download"), ""
    if url and is_offline():
        note = "Ultralytics is offline (no network, or YOLO_OFFLINE=1); online, it is downloaded on first use.\n"
    elif url:
        try:
            return download_release(url, out.parent / source["files"][0])
        except OSError as e:
            note = f"Downloading it failed: {e}\n"
    raise FileNotFoundError(release_not_found(yaml, out, folders, note))


def release_not_found(yaml: dict, out: Path, folders: list[Path], note: str) -> str:
    """What to get, from where, and where to put it (or how to convert a release stored elsewhere)."""
    source, yaml_file = yaml.get("source") or {}, yaml.get("yaml_file")
    data = Path(yaml_file).name if yaml_file else "<data.yaml>"
    files, where = ", ".join(source.get("files", [])), "\n  ".join(map(str, folders))
    url = source.get("download") or source.get("url", "(no url given)")
    return (f"Dataset {data} ({source.get('name', out.name)}): release not found.\n{note}Download it from {url} and "
            f"put one of\n  {files}\nin one of\n  {where}\nor convert a release stored elsewhere with\n  dsmoe convert "
            f"{data} <path-to-release>")


def download_release(url: str, file: Path) -> Path:
    """``url`` saved as ``file`` by Ultralytics' downloader (retries, resumes, checks the size); OSError if it fails."""
    LOGGER.info(f"Release not found locally: downloading {url} to {file}")
    return safe_download(url, file=file.name, dir=file.parent, unzip=False)


def unpack(release: Path, into: Path) -> Path:
    """A release folder as is; an archive unpacked into ``into``."""
    if release.is_dir():
        return release
    if not release.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"cannot unpack {release}: only {', '.join(ARCHIVE_SUFFIXES)} are supported; extract it "
                         "yourself and give the extracted folder instead")
    LOGGER.info(f"Unpacking {release} ...")
    tar = not release.name.lower().endswith(".zip")
    shutil.unpack_archive(release, into, **({"filter": "data"} if tar and hasattr(tarfile, "data_filter") else {}))
    return into


# --- format readers -------------------------------------------------------------------------------------------


def split_of(parts: tuple[str, ...]) -> str | None:
    """The split named by a word of a path's parts: ``NEU-DET/validation/...`` or ``Validation_Images`` -> ``val``."""
    words = (w for part in parts for w in re.split(r"[^a-z]+", part.lower()))
    return next((SPLIT_WORDS[w] for w in words if w in SPLIT_WORDS), None)


def image_index(root: Path) -> dict[str, list[Path]]:
    """Every image of the release, by stem (sorted paths, so lookups are deterministic)."""
    index = defaultdict(list)
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            index[p.stem].append(p)
    return index


def find_image(index: dict[str, list[Path]], stem: str, near: Path, hint: str = "") -> Path | None:
    """The image called ``stem``; among several, the one sharing most folder names with ``near`` and ``hint``."""
    words = {w.lower() for w in (*near.parts, *Path(hint).parts)}
    return min(index.get(stem, []), key=lambda p: -len(words & {w.lower() for w in p.parts}), default=None)


def image_size(path: Path) -> tuple[int, int]:
    """``(w, h)`` from the image header."""
    with Image.open(path) as im:
        return im.size


def number(node: ET.Element, tag: str, where: Path, default: float | None = None) -> float:
    """A numeric xml field; ValueError naming the file if it is missing (and has no default) or not a number."""
    text = (node.findtext(tag) or "").strip()
    if not text and default is not None:
        return default
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: <{tag}> is missing or not a number ({text!r})") from None


def is_voc(path: Path) -> bool:
    """A Pascal VOC annotation (not any xml: IDE project files, CVAT's ``<annotations>`` export, ...)."""
    with open(path, encoding="utf-8", errors="ignore") as f:
        return re.search(r"<annotation[\s>]", f.read(4096)) is not None


def read_voc(root: Path) -> list[Record]:
    """Pascal VOC xml (PKU-Market-PCB, NEU-DET): images are matched by stem anywhere in the release."""
    index, records = image_index(root), []
    for xml in sorted(p for p in root.rglob("*.xml") if is_voc(p)):
        try:
            ann = ET.parse(xml).getroot()
        except ET.ParseError as e:
            raise ValueError(f"corrupt VOC annotation {xml}: {e}") from None
        filename = (ann.findtext("filename") or "").strip()
        image = find_image(index, xml.stem, xml, filename) or find_image(index, Path(filename).stem, xml, filename)
        if image is None:
            raise FileNotFoundError(f"{xml}: no image {xml.stem}.* or {filename!r} anywhere in {root}")
        size = tuple(int(number(ann, f"size/{k}", xml, default=0)) for k in ("width", "height"))
        boxes = [((o.findtext("name") or "").strip(), *(number(o, f"bndbox/{k}", xml) for k in
                                                      ("xmin", "ymin", "xmax", "ymax"))) for o in ann.iter("object")]
        split = split_of(xml.relative_to(root).parent.parts) or split_of(image.relative_to(root).parent.parts)
        records.append((image, boxes, size if min(size) > 0 else image_size(image), split))
    return records


def coco_files(root: Path) -> list[tuple[Path, dict]]:
    """The release's COCO detection jsons (those with ``images`` and ``annotations``), parsed."""
    found = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: Windows tools write a byte-order mark
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupt json {path}: {e}") from None
        if isinstance(data, dict) and {"images", "annotations"} <= data.keys():
            found.append((path, data))
    return found


def read_coco(root: Path) -> list[Record]:
    """COCO json (Roboflow exports, the Baidu aluminum set): one json per split when its file or folder says so."""
    index, records = image_index(root), []
    for path, data in coco_files(root):
        rel = path.relative_to(root)
        split, boxes = split_of((*rel.parent.parts, rel.stem)), defaultdict(list)
        try:
            names = {c["id"]: c["name"] for c in data.get("categories", [])}
            for a in data["annotations"]:
                x, y, w, h = map(float, a["bbox"])
                boxes[a["image_id"]].append((names[a["category_id"]], x, y, x + w, y + h))
            for im in data["images"]:
                name = Path(str(im["file_name"]).replace("\\", "/"))
                image = find_image(index, name.stem, path, str(name))
                if image is None:
                    raise FileNotFoundError(f"{path}: image {name.name} not found anywhere in {root}")
                size = (int(im.get("width") or 0), int(im.get("height") or 0))
                records.append((image, boxes[im["id"]], size if min(size) > 0 else image_size(image), split))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid COCO detection json ({type(e).__name__}: {e})") from None
    return records


def box_rows(path: Path, label_at: int, layout: str) -> list[tuple[str, list[float]]]:
    """``(label, four numbers)`` per line of a 5-field box file (comma or space separated); errors name the line."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = [f for f in re.split(r"[,\s]+", line) if f]
        if not fields:
            continue
        try:
            if len(fields) != 5:
                raise ValueError
            label = fields.pop(label_at)
            rows.append((label, [float(f) for f in fields]))
        except ValueError:
            raise ValueError(f"{path}, line {n}: expected 5 fields '{layout}', got {line.strip()!r}") from None
    return rows


def deeppcb_lists(root: Path) -> list[Path]:
    """The release's split lists: ``trainval.txt`` and ``test.txt`` beside its group folders (``PCBData/``).

    Lists of the same names elsewhere (the annotation tool's ``tools/examples/test.txt``) are not the dataset's.
    """
    found = sorted(p for p in root.rglob("*.txt") if p.name in DEEPPCB_LISTS)
    lists = [p for p in found if any(p.parent.glob("*/*_not"))]
    if ignored := [str(p.relative_to(root)) for p in found if p not in lists]:
        LOGGER.info(f"DeepPCB: ignored {', '.join(ignored)} (not beside the release's group folders)")
    return lists


def read_deeppcb(root: Path) -> list[Record]:
    """DeepPCB: ``<group>/<id>_test.jpg`` + ``<group>_not/<id>.txt``; splits from ``trainval.txt``/``test.txt``."""
    pairs = []  # (image, annotation, split)
    for listing in deeppcb_lists(root):
        for n, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                if len(line.split()) != 2:
                    raise ValueError(f"{listing}, line {n}: expected '<image> <annotation>', got {line.strip()!r}")
                image, ann = (listing.parent / p for p in line.split())
                pairs.append((image.with_name(f"{image.stem}_test{image.suffix}"), ann, DEEPPCB_LISTS[listing.name]))
    if not pairs:  # no split lists: every annotation folder
        pairs = [(a.parent.with_name(a.parent.name[:-4]) / f"{a.stem}_test.jpg", a, None)
                 for a in sorted(root.rglob("*_not/*.txt"))]
    records = []
    for image, ann, split in pairs:
        if not image.is_file() or not ann.is_file():
            raise FileNotFoundError(f"DeepPCB pair incomplete: {image} and {ann} must both exist")
        boxes = [(t, *xyxy) for t, xyxy in box_rows(ann, -1, "x1,y1,x2,y2,type")]
        records.append((image, boxes, image_size(image), split))
    return records


def yolo_label(image: Path) -> Path:
    """The label file of an image, by Ultralytics' own rule (last ``/images/`` -> ``/labels/``, suffix ``.txt``)."""
    return Path(img2label_paths([image])[0])


def yolo_images(root: Path) -> list[Path]:
    """Images below an ``images/`` folder of the release."""
    return [p for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            and "images" in p.relative_to(root).parts[:-1]]


def read_yolo(root: Path) -> list[Record]:
    """A release already in YOLO format: class ids and splits kept, images without a label file are backgrounds."""
    records = []
    for image in yolo_images(root):
        label = yolo_label(image)
        rows = box_rows(label, 0, "cls xc yc w h") if label.is_file() else []
        boxes = [(int(c) if c.isdecimal() else c, x - w / 2, y - h / 2, x + w / 2, y + h / 2)
                 for c, (x, y, w, h) in rows]
        records.append((image, boxes, (1, 1), split_of(image.relative_to(root).parent.parts)))
    return records


def detect_format(root: Path) -> str:
    """``deeppcb``, ``voc``, ``coco`` or ``yolo``, from the release's files (checked in that order)."""
    if any(root.rglob("*_not/*.txt")):
        return "deeppcb"
    if any(is_voc(p) for p in root.rglob("*.xml")):
        return "voc"
    if coco_files(root):
        return "coco"
    if any(yolo_label(p).is_file() for p in yolo_images(root)):
        return "yolo"
    raise ValueError(f"cannot tell the format of {root}: no DeepPCB '*_not/*.txt', Pascal VOC '<annotation>' xml, "
                     "COCO json (with 'images' and 'annotations') or YOLO 'images/' + 'labels/' folders found")


READERS = {"deeppcb": read_deeppcb, "voc": read_voc, "coco": read_coco, "yolo": read_yolo}


# --- labels, splits, output -----------------------------------------------------------------------------------


def class_lookup(names: list[str], aliases: dict | None) -> dict[str, int]:
    """Label -> class id: exact names win over case-insensitive names, which win over the yaml's ``aliases:``."""
    lookup = {}
    for alias, name in (aliases or {}).items():
        if name not in names:
            raise ValueError(f"aliases: {alias!r} -> {name!r}, which is not one of the names {names}")
        lookup[class_key(alias)] = names.index(name)
    return lookup | {class_key(n): i for i, n in enumerate(names)} | {n: i for i, n in enumerate(names)}


def class_id(label: str | int, lookup: dict[str, int], nc: int) -> int | None:
    """A class id for a label (None if unknown); decimal labels outside the lookup are 1-based (DeepPCB types)."""
    if isinstance(label, int):
        return label if 0 <= label < nc else None
    found = lookup.get(label, lookup.get(class_key(label)))
    return int(label) - 1 if found is None and label.isdecimal() and 1 <= int(label) <= nc else found


def to_yolo(records: list[Record], names: list[str], aliases: dict | None, data: str) -> list[Item]:
    """``(image, [(cls, xc, yc, w, h), ...], split)`` per record: boxes clipped, degenerate ones dropped."""
    lookup, unknown, dropped, items = class_lookup(names, aliases), Counter(), 0, []
    for image, boxes, (w, h), split in records:
        rows = []
        for label, x1, y1, x2, y2 in boxes:
            cls = class_id(label, lookup, len(names))
            if cls is None:
                unknown[label if isinstance(label, str) else f"class id {label}"] += 1
                continue
            x1, x2, y1, y2 = min(max(x1, 0), w), min(max(x2, 0), w), min(max(y1, 0), h), min(max(y2, 0), h)
            if x2 <= x1 or y2 <= y1:
                dropped += 1
                continue
            rows.append((cls, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h))
        items.append((image, rows, split))
    if unknown:
        example = next(iter(unknown))
        raise ValueError(f"{data}: unknown labels {dict(unknown.most_common())} (label: boxes); the yaml's names are "
                         f"{names}. Map each to a name with `aliases:` in the data yaml, e.g.\n"
                         f"aliases: {{{example}: {names[0]}}}")
    if dropped:
        LOGGER.warning(f"{data}: dropped {dropped} degenerate boxes (zero area after clipping to the image)")
    return items


def random_split(items: list, ratios: list[float], seed: int) -> list[list]:
    """Seeded shuffle (of the path-sorted items, so deterministic) cut by ``ratios``; non-zero parts get >= 1 item."""
    items = sorted(items, key=lambda item: str(item[0]))
    random.Random(seed).shuffle(items)
    n, total = len(items), sum(ratios)
    held = [max(round(n * r / total), int(r > 0 and n > len(ratios))) for r in ratios[1:]]
    bounds = [0, n - sum(held)]
    for k in held:
        bounds.append(bounds[-1] + k)
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def unique_items(items: list[Item], data: str) -> tuple[list[Item], Counter]:
    """Each image once; ``{(split, earlier split): n}`` for images a later split repeats (a val json listing train
    images again, as the Baidu aluminum release's ``valid.json`` does for 354 of its 400 images)."""
    unique, repeats, differ = {}, Counter(), 0
    for item in items:
        first = unique.setdefault(item[0].resolve(), item)
        if first[2] != item[2]:
            repeats[item[2] or "unsplit", first[2] or "unsplit"] += 1
            differ += sorted(first[1]) != sorted(item[1])
    if differ:
        LOGGER.warning(f"{data}: {differ} images are listed in two splits with different boxes; the first kept")
    return list(unique.values()), repeats


def assign_splits(items: list[Item], ratios: list[float], seed: int, data: str) -> dict[str, list[Item]]:
    """The release's own splits (val carved out of train when missing), else a seeded split by ``ratios``.

    Splits that share images are not held out: each image is kept once and the whole set is split by ``ratios``.
    """
    items, repeats = unique_items(items, data)
    if repeats:
        shared = ", ".join(f"{n} {split} images repeat {first}" for (split, first), n in repeats.items())
        LOGGER.info(f"{data}: the release's splits are not held out ({shared}); each image is kept once and the "
                    f"{len(items)} images are split {ratios} with seed {seed}")
    given = set() if repeats else {split for *_, split in items if split}
    if not given - {"train"}:
        return dict(zip(SPLITS, [*random_split(items, ratios, seed), [], []]))  # a 2-way split: empty test
    splits = {s: [i for i in items if (i[2] or "train") == s] for s in SPLITS}
    if "val" not in given:
        splits["train"], splits["val"] = random_split(splits["train"], ratios[:2], seed)
    return splits


def write(stage: Path, splits: dict[str, list[Item]]) -> None:
    """``images/<split>/`` (hard links, else copies) and ``labels/<split>/*.txt`` (one possibly empty file each)."""
    for split in SPLITS:
        (stage / "images" / split).mkdir(parents=True)
        (stage / "labels" / split).mkdir(parents=True)
        used = set()
        for image, rows, _ in splits[split]:
            stem, k = image.stem, 0
            while stem.lower() in used:  # same file name in two release folders
                k += 1
                stem = f"{image.stem}_{k}"
            used.add(stem.lower())
            target = stage / "images" / split / f"{stem}{image.suffix}"
            try:
                os.link(image, target)
            except OSError:
                shutil.copy2(image, target)
            text = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in rows)
            (stage / "labels" / split / f"{stem}.txt").write_text(text)


def summary(splits: dict[str, list[Item]], names: list[str]) -> str:
    """Images, boxes and boxes per class for each split."""
    lines = []
    for split in SPLITS:
        per_class = Counter(names[row[0]] for _, rows, _ in splits[split] for row in rows)
        counts = ", ".join(f"{n} {per_class[n]}" for n in names)
        lines.append(f"  {split:<5} {len(splits[split]):>6} images {sum(per_class.values()):>7} boxes  ({counts})")
    return "\n".join(lines)


def prepare(yaml: dict, source: str | Path | None = None) -> Path:
    """Convert a dataset release into YOLO format at the yaml's ``path``; return that folder.

    Args:
        yaml: the data yaml as a dict (what ``check_det_dataset`` hands to ``download:``): ``path``, ``names``,
            ``source: {files, url}``, optional ``aliases``, ``split`` (default 8:1:1) and ``seed`` (default 42).
        source: the release, a folder or a .zip/.tar/.tar.gz/.tgz archive; default: found by ``find_release``.
    """
    names = class_list(yaml["names"])
    ratios, out = yaml.get("split") or [0.8, 0.1, 0.1], dataset_root(yaml)
    data = Path(yaml.get("yaml_file") or out.name).name
    if len(ratios) not in (2, 3) or min(ratios) < 0 or ratios[0] <= 0:
        raise ValueError(f"{data}: split: {ratios} must be [train, val] or [train, val, test] fractions, train > 0")
    release = Path(source).resolve() if source else find_release(yaml, out)
    if not release.exists():
        raise FileNotFoundError(f"{data}: release {release} does not exist")
    if out.exists() and any(out.iterdir()):
        state = "already holds a converted dataset" if (out / "images").is_dir() else "exists but holds no complete dataset"
        raise FileExistsError(f"{data}: {out} {state}; move or delete it and retry, or give another --out "
                              "(if it is the downloaded release, move it elsewhere first)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        root = unpack(release, Path(tmp) / "release")
        fmt = detect_format(root)
        items = to_yolo(READERS[fmt](root), names, yaml.get("aliases"), data)
        splits = assign_splits(items, ratios, yaml.get("seed", 42), data)
        write(Path(tmp) / "out", splits)
        if out.exists():
            out.rmdir()
        (Path(tmp) / "out").rename(out)
    LOGGER.info(f"{data}: converted the {fmt} release {release} to {out}\n{summary(splits, names)}")
    return out


def main(argv: list[str] | None = None) -> Path:
    """``dsmoe convert <data.yaml> <release> [--out DIR]``."""
    from ultralytics.utils.checks import check_yaml  # finds shipped names: patched when ultralytics_dsmoe is imported

    parser = argparse.ArgumentParser(prog="dsmoe convert",
                                     description="Convert a downloaded dataset release into YOLO format.")
    parser.add_argument("data", help="data yaml: a path or a shipped name such as pcb.yaml")
    parser.add_argument("release", help="the release: a folder or a .zip/.tar/.tar.gz/.tgz archive")
    parser.add_argument("--out", help="output folder (default: the yaml's path: under the Ultralytics datasets_dir)")
    args = parser.parse_args(argv)
    yaml = YAML.load(check_yaml(args.data), append_filename=True)
    if args.out:
        yaml["path"] = Path(args.out).resolve()
    return prepare(yaml, args.release)


if __name__ == "__main__":
    main()
