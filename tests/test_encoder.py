"""Stage 3 backbone: MobileSAM TinyViT shapes, weight loading policy, and a clear error for missing weights."""

import pytest
import torch

from ultralytics_dsmoe.nn import encoder
from ultralytics_dsmoe.nn.encoder import MOBILESAM_FILE, MobileSAMEncoder, find_mobilesam_weights


@pytest.fixture(scope="module")
def mobilesam_checkpoint(tmp_path_factory):
    """A randomly initialised MobileSAM saved like the real mobile_sam.pt (full SAM state dict)."""
    from ultralytics.models.sam.build import build_mobile_sam

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / MOBILESAM_FILE
    torch.save(build_mobile_sam().state_dict(), path)
    return path


def test_outputs_and_strides():
    enc = MobileSAMEncoder(3, "none")
    p2, p3, p4 = enc(torch.rand(2, 3, 64, 128))
    assert p2.shape == (2, 64, 16, 32) and p3.shape == (2, 128, 8, 16) and p4.shape == (2, 320, 4, 8)
    assert tuple(enc.out_channels) == (p2.shape[1], p3.shape[1], p4.shape[1])
    assert not any(n.startswith(("vit.neck", "vit.head", "vit.norm_head")) for n, _ in enc.named_parameters())


@pytest.mark.parametrize("hw", [(96, 160), (224, 224)])  # windows that need padding; a side equal to a window
def test_shape_free_forward_equals_tinyvit(hw):
    """The traceable forward is TinyViT's own computation, without set_imgsz module state."""
    torch.manual_seed(0)
    enc = MobileSAMEncoder(3, "none").eval()
    x = torch.rand(2, 3, *hw)
    vit, (h, w) = enc.vit, hw
    with torch.no_grad():
        p2, p3, p4 = enc(x)
        vit.set_imgsz([h, w])
        t = vit.patch_embed((x - enc.mean) / enc.std)
        for block in vit.layers[0].blocks:
            t = block(t)
        torch.testing.assert_close(p2, t, rtol=0, atol=0)
        t = vit.layers[0].downsample(t)
        for block in vit.layers[1].blocks:
            t = block(t)
        torch.testing.assert_close(p3, t.transpose(1, 2).reshape(2, 128, h // 8, w // 8), rtol=0, atol=1e-6)
        t = vit.layers[1].downsample(t)
        for layer in vit.layers[2:]:
            t = layer(t)
        torch.testing.assert_close(p4, t.transpose(1, 2).reshape(2, 320, h // 16, w // 16), rtol=0, atol=1e-6)


def test_loads_mobilesam_image_encoder_strictly(mobilesam_checkpoint):
    state = torch.load(mobilesam_checkpoint, weights_only=True)
    enc = MobileSAMEncoder(3, str(mobilesam_checkpoint))
    for name, p in enc.vit.state_dict().items():
        torch.testing.assert_close(p, state[f"image_encoder.{name}"], msg=name)


def test_auto_finds_weights_in_cwd_and_never_downloads(tmp_path, monkeypatch, mobilesam_checkpoint):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(encoder, "WEIGHTS_DIR", tmp_path / "weights")
    assert find_mobilesam_weights("auto") is None  # absent: random init, no download attempt
    (tmp_path / MOBILESAM_FILE).write_bytes(mobilesam_checkpoint.read_bytes())
    assert find_mobilesam_weights("auto").resolve() == (tmp_path / MOBILESAM_FILE).resolve()
    assert find_mobilesam_weights("none") is None


def test_missing_or_wrong_weights_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="'download' when online, or 'none'"):
        MobileSAMEncoder(3, str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"backbone.conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a MobileSAM checkpoint"):
        MobileSAMEncoder(3, str(bad))
    with pytest.raises(ValueError, match="3-channel"):
        MobileSAMEncoder(1)


def test_eval_then_half_keeps_cached_biases_in_dtype():
    """Ultralytics' AutoBackend calls .eval() before .half(): TinyViT's cached biases must follow the dtype."""
    torch.manual_seed(0)
    enc = MobileSAMEncoder(3, "none").eval()
    x = torch.rand(1, 3, 64, 64)
    ref = enc(x)
    out = enc.half()(x.half())
    assert all(o.dtype == torch.float16 for o in out)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.float(), r, atol=0.1, rtol=0.05)
