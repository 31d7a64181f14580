"""Stage 3 backbone: MobileSAM TinyViT shapes, weight loading policy, and a clear error for missing weights."""

import io
from pathlib import Path

import pytest
import torch

from ultralytics_dsmoe.nn import encoder
from ultralytics_dsmoe.nn.encoder import MOBILESAM_FILE, HybridEncoder, MobileSAMEncoder, find_mobilesam_weights, fold_batchnorms


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
    """The traceable forward is TinyViT's own computation, without set_imgsz module state. Attention runs through
    fused scaled-dot-product attention, which sums in another order than TinyViT's matmul-softmax-matmul: 1e-5."""
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
        torch.testing.assert_close(p3, t.transpose(1, 2).reshape(2, 128, h // 8, w // 8), rtol=0, atol=1e-5)
        t = vit.layers[1].downsample(t)
        for layer in vit.layers[2:]:
            t = layer(t)
        torch.testing.assert_close(p4, t.transpose(1, 2).reshape(2, 320, h // 16, w // 16), rtol=0, atol=1e-5)


def test_loads_mobilesam_image_encoder_strictly(mobilesam_checkpoint):
    state = torch.load(mobilesam_checkpoint, weights_only=True)
    enc = MobileSAMEncoder(3, str(mobilesam_checkpoint))
    for name, p in enc.vit.state_dict().items():
        torch.testing.assert_close(p, state[f"image_encoder.{name}"], msg=name)


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """An empty working and weights directory, a fresh once-per-reason warning, and a log of download calls that
    stand in for Ultralytics' asset download (tests never touch the network)."""
    from ultralytics import utils
    from ultralytics.utils import downloads

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(encoder, "WEIGHTS_DIR", tmp_path / "weights")
    encoder.warn_random_init.cache_clear()
    calls = []
    monkeypatch.setattr(downloads, "attempt_download_asset", lambda file, **kw: calls.append((Path(file), kw)) or file)
    monkeypatch.setattr(utils, "ONLINE", True)
    return tmp_path, calls


def test_auto_prefers_a_local_file(weights_dir, mobilesam_checkpoint):
    tmp_path, calls = weights_dir
    (tmp_path / MOBILESAM_FILE).write_bytes(mobilesam_checkpoint.read_bytes())
    assert find_mobilesam_weights("auto").resolve() == (tmp_path / MOBILESAM_FILE).resolve()
    assert find_mobilesam_weights("none") is None and calls == []


def test_auto_online_fetches_into_the_weights_dir(weights_dir, mobilesam_checkpoint, monkeypatch):
    """Online, `auto` downloads mobile_sam.pt like Ultralytics fetches yolo26n.pt (into its weights dir, bounded by one
    retry after a reachability probe), and the encoder loads what arrived."""
    tmp_path, calls = weights_dir
    from ultralytics.utils import downloads

    def download(file, **kw):
        calls.append((Path(file), kw))
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        Path(file).write_bytes(mobilesam_checkpoint.read_bytes())
        return str(file)

    monkeypatch.setattr(downloads, "attempt_download_asset", download)
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: io.BytesIO())
    enc = MobileSAMEncoder(3, "auto")
    assert calls == [(tmp_path / "weights" / MOBILESAM_FILE, {"retry": 1})]
    state = torch.load(mobilesam_checkpoint, weights_only=True)
    torch.testing.assert_close(enc.vit.patch_embed.seq[0].c.weight, state["image_encoder.patch_embed.seq.0.c.weight"])


def unreachable(*args, **kwargs):
    raise TimeoutError("timed out (simulated)")


def failing_download(file, **kwargs):
    raise ConnectionError("Download failure (simulated)")


@pytest.mark.parametrize("online, probe, download, reason", [
    (False, None, None, "Ultralytics is offline"),
    (True, unreachable, None, "github.com unreachable: timed out"),
    (True, lambda *a, **k: io.BytesIO(), failing_download, "download failed: Download failure"),
])
def test_auto_falls_back_to_random_init_with_one_warning(weights_dir, monkeypatch, caplog, online, probe, download,
                                                        reason):
    """Offline, unreachable or failed: random init, and one warning that says what that costs and how to fix it."""
    from ultralytics import utils
    from ultralytics.utils import downloads

    _, calls = weights_dir
    monkeypatch.setattr(utils, "ONLINE", online)
    if probe:
        monkeypatch.setattr("socket.create_connection", probe)
    if download:
        monkeypatch.setattr(downloads, "attempt_download_asset", download)
    with caplog.at_level("WARNING"):
        assert find_mobilesam_weights("auto") is None and find_mobilesam_weights("auto") is None
    assert caplog.text.count("MobileSAMEncoder: mobile_sam.pt not available") == 1 and reason in caplog.text
    assert "from scratch needs far more data and epochs" in caplog.text and "`weights: none`" in caplog.text
    assert calls == []  # the default stand-in was never asked: offline and unreachable never reach the download


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


# --- HybridEncoder: reduced-resolution TinyViT + full-resolution conv stem -------------------------------------


def test_hybrid_at_full_resolution_without_stem_is_mobilesam_encoder():
    """ratio 1, stem 0 reproduces the paper's encoder exactly (same weights, bit-identical outputs)."""
    torch.manual_seed(0)
    ref = MobileSAMEncoder(3, "none").eval()
    hybrid = HybridEncoder(3, "none", 1.0, 0).eval()
    hybrid.sam.load_state_dict(ref.state_dict())
    x = torch.rand(2, 3, 96, 160)
    with torch.no_grad():
        for a, b in zip(ref(x), hybrid(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("ratio, stem, p2", [(0.5, 16, False), (0.7, 8, True), (0.5, 0, False), (1.0, 8, False)])
def test_hybrid_shapes_match_the_full_resolution_grid(ratio, stem, p2):
    enc = HybridEncoder(3, "none", ratio, stem, p2)
    outs = enc(torch.rand(2, 3, 128, 192))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 32, 48), (2, 128, 16, 24), (2, 320, 8, 12)]
    assert (enc.stem is None) == (stem == 0)


def test_hybrid_stem_width_list():
    """One width c is YOLOv8's (c, 2c, 4c, 8c); a list of three stops the stem at P3/8, leaving P4 the TinyViT map."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 192)
    short = HybridEncoder(3, "none", 0.5, [4, 8, 32]).eval()
    full = HybridEncoder(3, "none", 0.5, 8).eval()
    assert {n: p.shape for n, p in full.state_dict().items()} == {
        n: p.shape for n, p in HybridEncoder(3, "none", 0.5, [8, 16, 32, 64]).state_dict().items()
    }
    assert len(short.stem.levels) == 2 and [p.conv.out_channels for p in short.stem.proj] == [128]
    with torch.no_grad():
        p2, p3, p4 = short(x)
        vit = short.sam(torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear"))
        detail = short.stem(x)
    assert [tuple(o.shape) for o in (p2, p3, p4)] == [(2, 64, 32, 48), (2, 128, 16, 24), (2, 320, 8, 12)]
    up = [torch.nn.functional.interpolate(v, size=p.shape[-2:], mode="bilinear") for v, p in zip(vit, (p2, p3, p4))]
    torch.testing.assert_close(p2, up[0])  # no P2 detail without p2
    torch.testing.assert_close(p3, up[1] + detail[1])
    torch.testing.assert_close(p4, up[2])  # the stem stops at P3/8
    for bad in ([8, 16], [8, 16, 0], [1, 2, 3, 4, 5]):
        with pytest.raises(ValueError, match="stem"):
            HybridEncoder(3, "none", 0.5, bad)


def test_yaml_scales_each_stem_width():
    """The model-YAML parser scales a stem width list like Conv widths (dsmoe-n: x 0.25)."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    d = yaml_model_load("dsmoe-n.yaml")
    d["backbone"][0][3] = ["none", 0.5, [64, 128, 512]]
    stem = DetectionModel(d, nc=2, verbose=False).model[0].stem
    assert [level[-2].conv.out_channels for level in stem.levels] == [32, 128]  # stride-4 and stride-8 convs
    assert stem.levels[0][0].conv.out_channels == 16


def test_hybrid_tinyvit_sees_the_reduced_image():
    """The semantic path runs at ratio x the input size: its cost falls with ratio^2."""
    enc = HybridEncoder(3, "none", 0.5, 8)
    seen = {}
    enc.sam.register_forward_hook(lambda m, inputs, out: seen.update(shape=tuple(inputs[0].shape)))
    enc(torch.rand(1, 3, 128, 192))
    assert seen["shape"] == (1, 3, 64, 96)


def test_hybrid_gradients_reach_every_parameter():
    torch.manual_seed(0)
    enc = HybridEncoder(3, "none", 0.5, 8, p2=True)
    sum(o.square().mean() for o in enc(torch.rand(2, 3, 64, 96))).backward()
    assert not [n for n, p in enc.named_parameters() if p.grad is None]
    # TinyViT zero-initialises the last BatchNorm of each MBConv residual branch (bn_weight_init=0), so the convs
    # before it get exact-zero gradients at step 0 by design; every stem/fusion parameter gets a non-zero one.
    assert all(p.grad.abs().sum() > 0 for n, p in enc.named_parameters() if n.startswith("stem."))
    assert all(p.grad.abs().sum() > 0 for n, p in enc.named_parameters() if ".layers.3." in n)


def test_hybrid_loads_mobilesam_weights_strictly(mobilesam_checkpoint):
    state = torch.load(mobilesam_checkpoint, weights_only=True)
    enc = HybridEncoder(3, str(mobilesam_checkpoint), 0.5, 16)
    for name, p in enc.sam.vit.state_dict().items():
        torch.testing.assert_close(p, state[f"image_encoder.{name}"], msg=name)
    with pytest.raises(ValueError, match="ratio"):
        HybridEncoder(3, "none", 1.5, 16)


def test_fold_batchnorms_keeps_outputs():
    """TinyViT's Conv2d_BN pairs (unknown to Ultralytics' fuse) fold into their convs with the same outputs."""
    from torch import nn

    torch.manual_seed(0)
    enc = HybridEncoder(3, "none", 0.5, 8)
    for m in enc.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.weight.data.uniform_(0.5, 1.5)
    enc.eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = enc(x)
        fold_batchnorms(enc.sam)
        out = enc(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in enc.sam.modules())
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_tinyvit_guard_names_what_changed():
    from ultralytics_dsmoe.guard import PatchError

    enc = MobileSAMEncoder(3, "none")
    del enc.vit.layers[2].blocks[0].attn.attention_biases
    with pytest.raises(PatchError, match="attn.attention_biases"):
        encoder.check_tinyvit(enc.vit)


def test_fitted_windows_attend_only_real_tokens():
    """On a map smaller than TinyViT's window, fitted windows give each token the same result as attention over the
    unpadded map with the learned relative biases of its offsets (a reference built from TinyViT's own tables)."""
    torch.manual_seed(0)
    enc = MobileSAMEncoder(3, "none", fit_windows=True).eval()
    blk = enc.vit.layers[2].blocks[0]  # window 14
    with torch.no_grad():
        blk.attn.attention_biases.normal_()
        tokens = torch.rand(2, 30, 160)  # (B, HW, C) of a 5 x 6 map: one window
        out = encoder._vit_block(blk, tokens, 5, 6, fit=True)
        pos = [(i, j) for i in range(5) for j in range(6)]
        idx = blk.attn.attention_bias_idxs.view(14, 14, 14, 14)
        bias = blk.attn.attention_biases[:, torch.stack([torch.stack([idx[a, b, c, d] for c, d in pos]) for a, b in pos])]
        a = blk.attn
        q, k, v = a.qkv(a.norm(tokens)).view(2, 30, a.num_heads, -1).split([a.key_dim, a.key_dim, a.d], dim=3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        att = ((q @ k.transpose(-2, -1)) * a.scale + bias).softmax(-1)
        ref = tokens + a.proj((att @ v).transpose(1, 2).reshape(2, 30, a.dh))
        ref = blk.local_conv(ref.transpose(1, 2).reshape(2, 160, 5, 6)).flatten(2).transpose(1, 2)
        ref = ref + blk.mlp(ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert encoder._fitted(20, 14) == 10 and encoder._fitted(40, 7) == 7 and encoder._fitted(5, 14) == 5
