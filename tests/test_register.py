"""The one seam: block registration, channel rules across scales, and loud failure on an unexpected Ultralytics."""

import copy

import pytest
import torch
from torch import nn

from ultralytics.nn import tasks
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils.ops import make_divisible
from ultralytics_dsmoe import register
from ultralytics_dsmoe.nn import MobileSAMEncoder, Pick

SCALES = {"n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024), "m": (0.67, 0.75, 768)}


class Mix(nn.Module):
    """Test block: multi-input (f is a list) and channel-changing."""

    def __init__(self, c1, c2):
        super().__init__()
        self.c1, self.c2 = c1, c2
        self.conv = nn.Conv2d(sum(c1), c2, 1)

    def forward(self, x):
        return self.conv(torch.cat([x[0], nn.functional.interpolate(x[1], size=x[0].shape[2:])], 1))


class Gate(nn.Module):
    """Test block: keeps its input channels."""

    def __init__(self, c1, k=1):
        super().__init__()
        self.c1, self.conv = c1, nn.Conv2d(c1, c1, k, padding=k // 2)

    def forward(self, x):
        return x * self.conv(x).sigmoid()


@pytest.fixture
def toy_blocks(monkeypatch):
    blocks = {**register.BLOCKS, "Mix": (Mix, register.scaled_output), "Gate": (Gate, register.same_channels)}
    monkeypatch.setattr(register, "BLOCKS", blocks)
    register.register_names()
    yield
    for name in ("Mix", "Gate"):
        delattr(tasks, name)
    monkeypatch.undo()
    register.register_names()


def toy_yaml(scale):
    return {
        "nc": 3,
        "scale": scale,
        "scales": SCALES,
        "backbone": [
            [-1, 1, "MobileSAMEncoder", ["none"]],  # 0: list [64, 128, 320]
            [0, 1, "Pick", [1]],  # 1: P3/8
            [0, 1, "Pick", [2]],  # 2: P4/16
            [[1, 2], 1, "Mix", [64]],  # 3: multi-input, channel-changing (P3/8)
            [-1, 1, "Gate", [3]],  # 4: same channels
            [2, 1, "Conv", [1024, 3, 2]],  # 5: P5/32
        ],
        "head": [[[4, 2, 5], 1, "Detect", ["nc"]]],
    }


@pytest.mark.parametrize("scale", list(SCALES))
def test_channel_rules_across_scales(toy_blocks, scale):
    depth, width, max_ch = SCALES[scale]
    model = DetectionModel(toy_yaml(scale), nc=3, verbose=False)
    enc, p3, p4, mix, gate, p5 = model.model[:6]
    assert isinstance(enc, MobileSAMEncoder) and isinstance(p3, Pick) and isinstance(p4, Pick)
    expected = make_divisible(min(64, max_ch) * width, 8)
    assert mix.c1 == [128, 320] and mix.c2 == expected  # list of input channels, width-scaled output
    assert gate.c1 == expected  # same-channel rule follows the previous block
    assert p5.conv.in_channels == 320 and p5.conv.out_channels == make_divisible(min(1024, max_ch) * width, 8)
    assert [cv[0].conv.in_channels for cv in model.model[-1].cv2] == [expected, 320, p5.conv.out_channels]
    assert model.stride.tolist() == [8, 16, 32]
    out = model(torch.zeros(1, 3, 64, 96))  # rectangular input, sides multiple of 32
    assert [f.shape[-2:] for f in out["feats"]] == [(8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("scale", list(SCALES))
def test_shipped_config_builds_every_scale(scale):
    depth, width, max_ch = SCALES[scale]
    model = DetectionModel(f"dsmoe-{scale}.yaml", nc=4, verbose=False)
    assert model.yaml["scale"] == scale
    detect = model.model[-1]
    assert [cv[0].conv.in_channels for cv in detect.cv2] == [make_divisible(min(c, max_ch) * width, 8)
                                                             for c in (256, 512, 1024)]
    assert model.stride.tolist() == [8, 16, 32]


def test_install_is_idempotent():
    parse_model, check_file = tasks.parse_model, register.checks.check_file
    register.install()
    register.install()
    assert tasks.parse_model is parse_model and register.checks.check_file is check_file
    assert not hasattr(tasks.parse_model.__wrapped__, "__wrapped__")  # wrapped once
    assert not hasattr(check_file._dsmoe_original, "_dsmoe_original")


def test_refuses_to_overwrite_existing_name(monkeypatch):
    monkeypatch.setattr(tasks, "Pick", object(), raising=False)
    with pytest.raises(register.PatchError, match="refusing to overwrite"):
        register.register_names()
    monkeypatch.undo()
    register.register_names()


def test_parse_model_shape_change_fails_loudly():
    def parse_model(d, ch, verbose=True):  # an "upstream" parse_model without the anchor
        return d

    with pytest.raises(register.PatchError, match=r"ultralytics .*parse_model no longer contains"):
        register.patched_parse_model(parse_model)


def test_function_signature_change_fails_loudly():
    module = type(copy)("fake")
    module.check_file = lambda path: path  # renamed parameter
    with pytest.raises(register.PatchError, match="no longer takes"):
        register.patch_function(module, "check_file", register._check_file, ("file",))
    with pytest.raises(register.PatchError, match="is missing"):
        register.patch_function(module, "check_font", register._check_font, ("font",))


def test_path_like_string_args_pass_through(monkeypatch):
    """Absolute paths in YAML args reach the block instead of crashing ast.literal_eval."""
    seen = {}
    monkeypatch.setattr(MobileSAMEncoder, "__init__", lambda self, c1, w, **kw: (nn.Module.__init__(self), seen.update(w=w)))
    d = yaml_model_load("dsmoe.yaml")
    d["backbone"][0][3] = ["/abs/path/mobile_sam.pt"]
    with pytest.raises(Exception):  # the stubbed encoder cannot run the stride probe; parsing got past the args
        DetectionModel(d, nc=2, verbose=False)
    assert seen["w"] == "/abs/path/mobile_sam.pt"


def test_unknown_block_name_gets_a_clear_error():
    d = yaml_model_load("dsmoe.yaml")
    row = next(i for i, r in enumerate(d["backbone"]) if r[2] == "SparseMoE")
    d["backbone"][row][2] = "SparseMOE"
    with pytest.raises(KeyError) as e:  # still a KeyError for code that catches one
        DetectionModel(d, nc=2, verbose=False)
    msg = str(e.value)
    assert f"Unknown block 'SparseMOE' in row {row}" in msg and "Did you mean SparseMoE?" in msg
    assert "DS-MoE blocks: MobileSAMEncoder" in msg and "ULTRALYTICS_DSMOE_AUTOLOAD" in msg
