"""The paper's pre-processing: gamma (eq. 35) as a data-yaml key, and the training recipe as a cfg override file."""

import numpy as np
import pytest
from ultralytics import YOLO
from ultralytics.cfg import get_cfg
from ultralytics.data import build_yolo_dataset
from ultralytics.models.yolo.detect import DetectionPredictor

from ultralytics_dsmoe.data.gamma import apply_gamma, checked_gamma
from ultralytics_dsmoe.data.synthetic import generate


def test_transform_is_s_equals_r_to_the_gamma():
    im = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = apply_gamma(im.copy(), 1.5).astype(float)
    assert np.abs(out - 255 * (im / 255.0) ** 1.5).max() <= 0.5  # rounded to uint8
    assert out[..., 0].flat[128] == round(255 * (128 / 255) ** 1.5) == 91  # mid grey darkens
    assert out.flat[0] == 0 and out.flat[-1] == 255  # black and white are fixed points
    f = np.full((2, 2), 63.75, np.float32)
    assert np.allclose(apply_gamma(f, 2.0), 15.9375)  # float images: no rounding
    with pytest.raises(ValueError, match="1.5"):
        checked_gamma("1.5")  # a typo'd string is an error, never silently ignored


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("gamma") / "set", seed=3, train=4, val=2, imgsz=64)
    return {"path": str(root), "names": {0: "pinhole", 1: "scratch", 2: "stain", 3: "crease"}, "channels": 3,
            "train": str(root / "images" / "train"), "val": str(root / "images" / "val")}


@pytest.mark.parametrize("cache", [False, "ram"])
def test_dataset_applies_gamma_once(data, cache):
    cfg = get_cfg(overrides={"imgsz": 64, "cache": cache})

    def first_image(gamma, mode):
        d = {**data, "gamma": gamma} if gamma else data
        ds = build_yolo_dataset(cfg, data["train"], 2, d, mode=mode)
        return [ds.load_image(0)[0].copy() for _ in range(2)]  # the second read comes from RAM or the buffer

    plain = first_image(None, "val")[0]
    for mode in ("train", "val"):
        a, b = first_image(1.5, mode)
        assert np.array_equal(a, apply_gamma(plain.copy(), 1.5)) and np.array_equal(a, b)


def test_predict_applies_the_recorded_gamma():
    im = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    original = im.copy()
    predictor = DetectionPredictor(overrides={"imgsz": 64, "verbose": False})
    predictor.setup_model(YOLO("yolov8n.yaml").model)
    predictor.imgsz = (64, 64)
    model = predictor.model.model  # AutoBackend's (fused) PyTorch model
    plain = predictor.pre_transform([im])[0]
    model.yaml["gamma"] = 1.5  # what training on a `gamma:` data yaml records in the checkpoint
    corrected = predictor.pre_transform([im])[0]
    assert np.array_equal(im, original)  # the caller's image is not modified
    model.yaml.pop("gamma")
    assert np.array_equal(corrected, predictor.pre_transform([apply_gamma(im.copy(), 1.5)])[0])
    assert not np.array_equal(plain, corrected)


def test_paper_recipe_is_a_valid_cfg_override_from_any_folder(tmp_path, monkeypatch):
    from ultralytics.utils import YAML, checks

    monkeypatch.chdir(tmp_path)
    recipe = YAML.load(checks.check_yaml("paper-recipe.yaml"))
    assert recipe == {"optimizer": "Adam", "lr0": 0.001, "cos_lr": True, "weight_decay": 0.001, "momentum": 0.9,
                      "imgsz": 640, "batch": 8, "mixup": 0.5, "seed": 42, "deterministic": True}
    cfg = get_cfg(overrides={**recipe, "epochs": 3})  # every key is a real Ultralytics setting
    assert (cfg.optimizer, cfg.mixup, cfg.seed, cfg.epochs) == ("Adam", 0.5, 42, 3)
