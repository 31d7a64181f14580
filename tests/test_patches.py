"""The one seam (``ultralytics_dsmoe.patches``): block registration, channel rules across scales, idempotence, and a
loud failure from every guard when Ultralytics does not have the expected shape."""

import copy
import functools
import types

import pytest
import torch
from torch import nn

from ultralytics.nn import tasks
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils.ops import make_divisible
from ultralytics.utils import checks
from ultralytics_dsmoe import patches
from ultralytics_dsmoe.guard import MARK, PatchError, is_patched, patch_function, source_of
from ultralytics_dsmoe.nn import BLOCKS, DSCBAM, Block, HybridEncoder, MobileSAMEncoder, Pick
from ultralytics_dsmoe.nn.rules import same_channels, scaled_output
from ultralytics_dsmoe.patches import criterion, lookup, offline, parser

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
    """Two test blocks added to the stage table: one entry each is all a new block needs."""
    monkeypatch.setitem(BLOCKS, "Mix", Block(Mix, scaled_output))
    monkeypatch.setitem(BLOCKS, "Gate", Block(Gate, same_channels))
    parser.register_names()
    yield
    for name in ("Mix", "Gate"):
        delattr(tasks, name)
    monkeypatch.undo()
    parser.register_names()


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
    parse_model, check_file = tasks.parse_model, checks.check_file
    patches.install()
    patches.install()
    assert tasks.parse_model is parse_model and checks.check_file is check_file
    assert is_patched(parse_model) and not is_patched(getattr(parse_model, MARK))  # patched once
    assert is_patched(check_file) and not is_patched(getattr(check_file, MARK))


def test_a_foreign_wrapper_does_not_pass_for_the_plugins_patch():
    """Another library's functools.wraps wrapper has ``__wrapped__`` but not the plugin's marker."""

    def original(file):
        return file

    @functools.wraps(original)
    def foreign(file):
        return original(file)

    assert hasattr(foreign, "__wrapped__") and not is_patched(foreign)
    module = type(copy)("fake")
    module.__name__, module.check_file = "fake", foreign
    patch_function(module, "check_file", lookup._check_file, ("file",))
    assert is_patched(module.check_file) and getattr(module.check_file, MARK) is foreign


def test_refuses_to_overwrite_existing_name(monkeypatch):
    monkeypatch.setattr(tasks, "Pick", object(), raising=False)
    with pytest.raises(PatchError, match="refusing to overwrite"):
        parser.register_names()
    monkeypatch.undo()
    parser.register_names()


def test_an_old_name_taken_by_ultralytics_is_left_to_it(monkeypatch, caplog):
    """``CBAM`` (plugin 0.1.0's name for DSCBAM) is only an alias: if Ultralytics' own CBAM appears in the parser's
    namespace, the plugin leaves it there and says what old YAMLs must rename, instead of refusing to load."""
    from ultralytics.nn.modules import CBAM

    monkeypatch.setattr(tasks, "CBAM", CBAM, raising=False)
    with caplog.at_level("WARNING"):
        parser.register_names()
    assert tasks.CBAM is CBAM and "must name the DS-MoE block 'DSCBAM'" in caplog.text
    monkeypatch.undo()
    parser.register_names()
    assert tasks.CBAM is DSCBAM


def test_parse_model_shape_change_fails_loudly():
    def parse_model(d, ch, verbose=True):  # an "upstream" parse_model without the anchor
        return d

    with pytest.raises(PatchError, match=r"ultralytics .*parse_model no longer contains"):
        parser.patched_parse_model(parse_model)


def test_missing_source_fails_loudly():
    """An install without .py sources: PatchError, not a raw OSError from inspect."""
    namespace = {}
    exec("def parse_model(d, ch, verbose=True):\n    return d\n", namespace)  # noqa: S102 - no source file
    with pytest.raises(PatchError, match="source of parse_model is unavailable"):
        source_of(namespace["parse_model"])
    with pytest.raises(PatchError, match="source of parse_model is unavailable"):
        parser.patched_parse_model(namespace["parse_model"])


def test_function_signature_change_fails_loudly():
    module = type(copy)("fake")
    module.check_file = lambda path: path  # renamed parameter
    with pytest.raises(PatchError, match="no longer takes"):
        patch_function(module, "check_file", lookup._check_file, ("file",))
    with pytest.raises(PatchError, match="is missing"):
        patch_function(module, "check_font", offline._check_font, ("font",))


def test_detection_loss_guard_fires_when_bce_is_no_longer_the_classification_term():
    from ultralytics.utils.loss import v8DetectionLoss

    criterion.check_detection_loss(v8DetectionLoss)  # the installed one has the expected shape

    class Renamed(v8DetectionLoss):
        def __init__(self, model):
            self.cls_loss = torch.nn.BCEWithLogitsLoss(reduction="none")

    with pytest.raises(PatchError, match=r"Renamed.__init__ no longer contains .*self.bce = "):
        criterion.check_detection_loss(Renamed)

    class NoItems(v8DetectionLoss):
        def loss(self, preds, batch):
            return self.get_assigned_targets_and_loss(preds, batch)[1]

    with pytest.raises(PatchError, match="NoItems.loss no longer contains"):
        criterion.check_detection_loss(NoItems)


def test_path_like_string_args_pass_through(monkeypatch):
    """Absolute paths in YAML args reach the block instead of crashing ast.literal_eval."""

    class Parsed(Exception):
        pass

    def stub(self, c1, weights, *args):
        raise Parsed(weights)

    monkeypatch.setattr(HybridEncoder, "__init__", stub)
    d = yaml_model_load("dsmoe.yaml")
    d["backbone"][0][3][0] = "/abs/path/mobile_sam.pt"
    with pytest.raises(Parsed, match="^/abs/path/mobile_sam.pt$"):  # the block got the string as written
        DetectionModel(d, nc=2, verbose=False)


def test_unknown_block_name_gets_a_clear_error():
    d = yaml_model_load("dsmoe.yaml")
    row = next(i for i, r in enumerate(d["backbone"]) if r[2] == "SparseMoE")
    d["backbone"][row][2] = "SparseMOE"
    with pytest.raises(KeyError) as e:  # still a KeyError for code that catches one
        DetectionModel(d, nc=2, verbose=False)
    msg = str(e.value)
    assert f"Unknown block 'SparseMOE' in row {row}" in msg and "Did you mean SparseMoE?" in msg
    assert "DS-MoE blocks: MobileSAMEncoder" in msg and "ULTRALYTICS_DSMOE_AUTOLOAD" in msg


def test_offline_non_latin_labels_get_a_cjk_font_or_one_warning(monkeypatch, caplog, tmp_path):
    """Ultralytics asks for Arial.Unicode.ttf for non-ASCII labels (e.g. Chinese aluminum class names); offline, the
    plugin uses an installed CJK font, or warns once naming the file to add (DejaVu Sans has no CJK glyphs)."""
    from matplotlib import font_manager

    monkeypatch.setattr(offline, "is_offline", lambda: True)
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [e for e in font_manager.fontManager.ttflist
                                                             if not e.name.startswith(offline.CJK_FAMILIES)])
    offline.warn_no_cjk_font.cache_clear()
    with caplog.at_level("WARNING"):
        first, second = checks.check_font("Arial.Unicode.ttf"), checks.check_font("Arial.Unicode.ttf")
    assert first == second and first.name.startswith("DejaVuSans")
    assert caplog.text.count("No CJK font on this machine") == 1 and "Arial.Unicode.ttf" in caplog.text
    cjk = font_manager.FontEntry(fname=str(tmp_path / "NotoSansCJK-Regular.ttc"), name="Noto Sans CJK SC")
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [*font_manager.fontManager.ttflist, cjk])
    assert checks.check_font("Arial.Unicode.ttf") == tmp_path / "NotoSansCJK-Regular.ttc"
    assert checks.check_font("Arial.ttf").name.startswith("DejaVuSans")  # Latin labels: unchanged


def test_amp_check_of_plain_yolo_models_stays_ultralytics_own(monkeypatch):
    """Offline on CUDA, the plugin replaces the AMP check's yolo26n.pt download by a check on the model itself, but
    only for DS-MoE models: a plain YOLO model gets Ultralytics' own check, whatever the network."""
    monkeypatch.setattr(offline, "is_offline", lambda: True)
    calls = []
    check_amp = offline._check_amp(lambda model, *a, **k: calls.append(model) or "stock")
    plain = DetectionModel("yolov8n.yaml", verbose=False)
    on_cuda = types.SimpleNamespace(device=torch.device("cuda"))
    monkeypatch.setattr(plain, "parameters", lambda *a, **k: iter([on_cuda]))
    assert check_amp(plain) == "stock" and calls == [plain]
    assert not offline.is_dsmoe(plain) and offline.is_dsmoe(nn.Sequential(nn.Conv2d(3, 8, 1), DSCBAM(8)))
