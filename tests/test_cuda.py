"""CUDA: AMP training, reduced-precision inference, the offline AMP check and ONNX Runtime on CUDA.

Marked ``cuda``: they skip where no GPU is visible (CI has none) and run on the GPU machine through
``benchmarks/gpu/run.sh``. Tolerances are stated beside each comparison."""

import numpy as np
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel

from ultralytics_dsmoe.data.synthetic import generate

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the cuda marker)")]
NAMES = "{0: pinhole, 1: scratch, 2: stain, 3: crease}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    folder = generate(root / "set", seed=5, train=80, val=8, imgsz=128)
    (root / "data.yaml").write_text(f"path: {folder}\ntrain: images/train\nval: images/val\nnames: {NAMES}\n")
    return root


def test_amp_training_steps_are_finite_scaled_and_update_every_parameter(data, monkeypatch):
    """20 AMP steps of dsmoe-n (80 images, batch 4, one epoch) through the stock trainer, offline: the AMP check
    passes without a download, the losses stay finite, GradScaler keeps a usable scale (it halves on each skipped
    step, so a scale >= 2**8 after 20 steps from 2**16 means most steps were applied), and every parameter tensor
    moved from its initial value."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    model = YOLO("dsmoe-n.yaml")
    seen = {}

    def start(trainer):
        seen["init"] = {k: v.detach().float().clone() for k, v in trainer.model.named_parameters()}

    def step(trainer):
        seen.setdefault("losses", []).append(trainer.tloss.detach().float().cpu())

    def end(trainer):
        seen["amp"], seen["scale"] = trainer.amp, trainer.scaler.get_scale()
        seen["final"] = {k: v.detach().float() for k, v in trainer.model.named_parameters()}

    model.add_callback("on_train_start", start)
    model.add_callback("on_train_batch_end", step)
    model.add_callback("on_train_end", end)
    model.train(data=str(data / "data.yaml"), epochs=1, imgsz=128, batch=4, device=0, amp=True, workers=0,
                plots=False, val=False, project=str(data / "runs"), name="amp", exist_ok=True, warmup_epochs=0)
    assert seen["amp"] is True  # the offline check_amp path enabled AMP
    assert len(seen["losses"]) == 20 and all(torch.isfinite(x).all() for x in seen["losses"])
    assert seen["scale"] >= 2**8, seen["scale"]
    frozen = [k for k, v in seen["init"].items() if torch.equal(v, seen["final"][k])]
    assert not frozen, f"parameters never updated: {frozen}"


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 0.02), (torch.bfloat16, 0.06)])
def test_reduced_precision_inference_matches_fp32(dtype, tol):
    """Boxes (pixels, relative to the image size) and class scores of fp16 / bf16 autocast against fp32 on the GPU.

    Tolerances: fp16 has 10 mantissa bits, bf16 7; 0.02 / 0.06 of the image size for boxes and absolute for scores
    bound what the fp32 islands (the Poincare stage and the router run in fp32) leave."""
    torch.manual_seed(0)
    model = DetectionModel("dsmoe-n.yaml", nc=4, verbose=False).cuda().eval()
    x = torch.rand(2, 3, 256, 256, device="cuda")
    with torch.no_grad():
        ref = model(x)[0].float()
        with torch.autocast("cuda", dtype=dtype):
            low = model(x)[0].float()
    assert torch.isfinite(low).all()
    box_err = (low[:, :4] - ref[:, :4]).abs().max().item() / 256
    score_err = (low[:, 4:] - ref[:, 4:]).abs().max().item()
    assert box_err <= tol and score_err <= tol, (box_err, score_err)


def test_offline_amp_check_runs_on_the_model_itself(monkeypatch, tmp_path):
    from ultralytics.utils import checks

    from ultralytics_dsmoe.patches import offline

    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setattr(offline, "is_offline", lambda: True)
    monkeypatch.setattr(offline, "WEIGHTS_DIR", tmp_path)  # no yolo26n.pt: the stock check would try to download
    model = DetectionModel("dsmoe-n.yaml", nc=4, verbose=False).cuda()
    assert checks.check_amp(model) is True


def test_onnx_runtime_cuda_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here")
    torch.manual_seed(0)
    y = YOLO("dsmoe-n.yaml")
    file = y.export(format="onnx", imgsz=256, simplify=False, device="cpu")
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        ref = y.model.float().eval().fuse()(x)[0].numpy()
    session = ort.InferenceSession(file, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=5e-3, rtol=1e-3)  # TF32/cuDNN kernels against CPU fp32
