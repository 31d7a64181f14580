"""Bare config and dataset names resolve to the shipped files from any directory; the scale letter is honoured."""

import logging
from pathlib import Path

import pytest

from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils import checks
from ultralytics_dsmoe import meta
from ultralytics_dsmoe.patches import lookup


@pytest.mark.parametrize("name, scale", [("dsmoe.yaml", ""), ("dsmoe-n.yaml", "n"), ("dsmoe-s.yaml", "s"),
                                         ("dsmoe-m.yaml", "m")])
def test_bare_names_resolve_with_scale(tmp_path, monkeypatch, name, scale):
    monkeypatch.chdir(tmp_path)
    assert Path(checks.check_yaml(name)) == meta.CFG_DIR / "dsmoe.yaml"
    assert yaml_model_load(name)["scale"] == scale


@pytest.mark.parametrize("name, scale", [("dsmoe-v8s.yaml", "s"), ("runs/dsmoe-v8-grounded_regions-g0.1-s.yaml", "s"),
                                         ("dsmoe-v1.2-m.yaml", "m"), ("dsmoe-11x.yml", "x")])
def test_scale_letter_read_from_any_dsmoe_file_name(name, scale):
    from ultralytics.nn.tasks import guess_model_scale

    assert guess_model_scale(name) == scale  # dots in a name (a gain, a version) do not hide its scale


def test_no_assumed_scale_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ultralytics"):
        DetectionModel("dsmoe-s.yaml", nc=2, verbose=False)
    assert "Assuming scale" not in caplog.text


def test_local_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "dsmoe-n.yaml"
    local.write_text((meta.CFG_DIR / "dsmoe.yaml").read_text().replace("nc: 4", "nc: 7"))
    assert checks.check_yaml("dsmoe-n.yaml") == "dsmoe-n.yaml"
    assert yaml_model_load("dsmoe-n.yaml")["nc"] == 7


def test_dataset_names_resolve(tmp_path, monkeypatch):
    from ultralytics.data import utils as data_utils  # holds its own reference to check_file

    monkeypatch.chdir(tmp_path)
    assert Path(data_utils.check_file("synthetic-defects.yaml")) == meta.DATA_DIR / "synthetic-defects.yaml"


def test_stock_lookup_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(checks.check_yaml("yolov8n.yaml", hard=False) or checks.check_yaml("yolov8.yaml")).name == "yolov8.yaml"
    assert yaml_model_load("yolov8s.yaml")["scale"] == "s"
    assert lookup.shipped_file("missing-thing.yaml") is None
    assert lookup.shipped_file("sub/dsmoe.yaml") is None  # paths with folders are never redirected


@pytest.mark.parametrize("name", ["dsmoe-x.yaml", "dsmoe-l.yaml"])
def test_a_scale_the_config_lacks_names_the_ones_it_has(name):
    with pytest.raises(ValueError, match=rf"'{name}' asks for scale '{name[6]}'.*dsmoe-n, dsmoe-s, dsmoe-m"):
        DetectionModel(name, nc=4, verbose=False)
