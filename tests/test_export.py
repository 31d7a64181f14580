"""Deployment through Ultralytics' own exporter: fused model, dynamic ONNX, ORT parity after NMS, predict on .onnx."""

import os

import numpy as np
import pytest
import torch

from ultralytics import YOLO
from ultralytics.utils.nms import non_max_suppression

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A dsmoe-n with trained-like statistics (a few steps of BN updates), exported into a temporary folder."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(5)  # with the hybrid encoder, seeds 0-4 give near-tied boxes whose NMS outcome flips on 1e-4 px noise
    model = YOLO("dsmoe-n.yaml")
    net = model.model.train()
    with torch.no_grad():  # give BatchNorm running statistics, so eval-mode activations are not vanishingly small
        for _ in range(3):
            net(torch.rand(4, 3, 64, 64))
        for m in net.modules():  # and spread detection scores over (0, 1): NMS has boxes to keep and no near-ties
            if hasattr(m, "cv3"):
                for seq in m.cv3:
                    seq[-1].bias.fill_(0.0)
                    seq[-1].weight.mul_(2000.0)  # kept scores >= 7e-6 apart vs ~5e-7 ORT noise
    net.eval()
    cwd = os.getcwd()
    os.chdir(folder)  # a model built from a yaml exports into the working directory
    try:
        onnx = model.export(format="onnx", imgsz=64, dynamic=True, simplify=False)
    finally:
        os.chdir(cwd)
    return model, str(folder / onnx)


def test_dynamic_onnx_matches_pytorch_after_nms_on_another_shape(exported):
    model, onnx = exported
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))  # not the traced 64x64 / batch 1
    net = model.model.eval()
    with torch.no_grad():
        ref = net(x)[0]
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-3
    kept_ref = non_max_suppression(ref, conf_thres=0.25, iou_thres=0.7)
    kept_ort = non_max_suppression(out, conf_thres=0.25, iou_thres=0.7)
    assert sum(len(k) for k in kept_ref) > 0  # the comparison is not vacuous
    for a, b in zip(kept_ref, kept_ort):  # same boxes, scores and classes (rows matched, order aside)
        assert a.shape == b.shape
        assert torch.cdist(a, b, p=float("inf")).min(1).values.max() <= 1e-3


def test_model_fuse_keeps_outputs(exported):
    model, _ = exported
    net = model.model.eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        before = net(x)[0]
        after = net.fuse(verbose=False)(x)[0]
    torch.testing.assert_close(after, before, atol=1e-3, rtol=1e-3)
    left = [n for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not left, left  # TinyViT's and the DS-MoE blocks' conv + BN pairs are folded too, not only Ultralytics' Conv


def test_predict_on_the_exported_onnx(exported, tmp_path):
    """``yolo predict`` on the .onnx finds the same boxes, scores and classes as on the PyTorch model."""
    model, onnx = exported
    image = (np.random.default_rng(0).random((100, 140, 3)) * 255).astype(np.uint8)  # letterboxed to 96x128-ish
    (got,) = YOLO(onnx, task="detect").predict(image, imgsz=128, conf=0.01, verbose=False)
    (ref,) = model.predict(image, imgsz=128, conf=0.01, verbose=False)
    assert len(ref.boxes) > 0 and len(got.boxes) == len(ref.boxes)
    a, b = (torch.cat([r.boxes.xyxy, r.boxes.conf[:, None], r.boxes.cls[:, None]], 1).cpu() for r in (ref, got))
    assert torch.cdist(a, b, p=float("inf")).min(1).values.max() <= 1e-2  # rows matched, order aside; pixels
