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


def test_predict_on_a_tensor_applies_the_recorded_gamma_like_an_array():
    """Tensors skip pre_transform: the recorded gamma must still reach the model, equal to the array path's."""
    import torch

    im = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    predictor = DetectionPredictor(overrides={"imgsz": 64, "verbose": False})
    predictor.setup_model(YOLO("yolov8n.yaml").model)
    predictor.imgsz = (64, 64)
    predictor.model.model.yaml["gamma"] = 1.5
    from_array = predictor.preprocess([im])  # (1, 3, 64, 64), RGB 0-1, gamma by the uint8 lookup table
    tensor = torch.from_numpy(im[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255  # RGB 0-1, as users pass it
    from_tensor = predictor.preprocess(tensor)
    assert (from_tensor - from_array).abs().max() <= 1 / 255  # the same s = r^gamma, up to uint8 rounding
    predictor.model.model.yaml.pop("gamma")
    assert (predictor.preprocess(tensor) - tensor).abs().max() == 0  # no record: untouched


def test_val_without_gamma_in_the_data_yaml_applies_the_recorded_one(data, tmp_path, caplog):
    from ultralytics.utils import YAML

    file = tmp_path / "data.yaml"
    YAML.save(file, {k: v for k, v in data.items() if k != "channels"})  # no `gamma:`
    model = YOLO("yolov8n.yaml")
    model.model.yaml["gamma"] = 1.5  # trained with gamma 1.5
    seen = {}
    model.add_callback("on_val_end", lambda v: seen.update(data=v.data.get("gamma"),
                                                            dataset=v.dataloader.dataset.data.get("gamma")))
    with caplog.at_level("WARNING"):
        model.val(data=str(file), imgsz=64, batch=2, device="cpu", plots=False, workers=0, project=str(tmp_path))
    assert seen == {"data": 1.5, "dataset": 1.5}  # the images were read with the recorded gamma
    assert "trained with gamma 1.5 (paper eq. 35) but the data yaml has no 'gamma:'" in caplog.text


def test_paper_recipe_is_a_valid_cfg_override_from_any_folder(tmp_path, monkeypatch):
    from ultralytics.utils import YAML, checks

    monkeypatch.chdir(tmp_path)
    recipe = YAML.load(checks.check_yaml("paper-recipe.yaml"))
    assert recipe == {"optimizer": "Adam", "lr0": 0.001, "cos_lr": True, "weight_decay": 0.001, "momentum": 0.9,
                      "imgsz": 640, "batch": 8, "mixup": 0.5, "seed": 42, "deterministic": True}
    cfg = get_cfg(overrides={**recipe, "epochs": 3})  # every key is a real Ultralytics setting
    assert (cfg.optimizer, cfg.mixup, cfg.seed, cfg.epochs) == ("Adam", 0.5, 42, 3)
