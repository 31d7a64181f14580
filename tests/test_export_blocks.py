"""Export safety: every DS-MoE block, and a whole DS-MoE detector, exports to ONNX (opset 18, TorchScript exporter)
with dynamic batch and spatial axes, and onnxruntime reproduces PyTorch on a batch size and image shape that were not
traced. Tracing must not turn tensors into Python values (that would freeze the traced shape into the graph)."""

from __future__ import annotations

import copy
import importlib
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")

importlib.import_module("ultralytics_dsmoe")  # registers the blocks (a no-op when the autoload hook already did)
from ultralytics_dsmoe.nn import (  # noqa: E402
    AnisotropicDSConv,
    ClassText,
    DSCBAM,
    ExpertEnsemble,
    ExpertRouter,
    FeatureAggregate,
    HyperbolicAlign,
    HybridEncoder,
    MobileSAMEncoder,
    SemanticDistill,
    SpaceBroadcast,
    SparseMoE,
)
from ultralytics_dsmoe.nn.moe import split_regions  # noqa: E402
from ultralytics_dsmoe.nn.transient import AuxLossBlock  # noqa: E402

TOL = 1e-4
C, D, NC = 32, 32, 4  # channels, text width, classes of the block cases
TRACE, CHECK = (1, 12, 16), (2, 20, 28)  # (batch, H, W) traced, and checked against onnxruntime
FMAP_AXES, TEXT_AXES = {0: "batch", 2: "height", 3: "width"}, {0: "batch"}


class ListInput(nn.Module):
    """Wraps a block taking a list of tensors so that the export sees separate, named inputs."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *xs: torch.Tensor):
        return self.block(list(xs))


class RoutedMoE(nn.Module):
    """SparseMoE output plus the top-k experts and gates of its router, so that routing is compared exactly."""

    def __init__(self, moe: SparseMoE):
        super().__init__()
        self.moe = moe

    def forward(self, f: torch.Tensor, t: torch.Tensor, *geo: torch.Tensor):
        s = self.moe.regions  # the router sees what SparseMoE gives it: each image, or each region of an s x s grid
        _, idx, gates, _ = self.moe.router(split_regions(f, s, self.moe.c_in), t)
        return self.moe([f, t, *geo]), idx, gates


def biased(moe: SparseMoE) -> SparseMoE:
    """A selection bias large enough to change which experts are chosen (probs are ~1/8 each)."""
    moe.router.select_bias.copy_(torch.linspace(-0.1, 0.1, moe.ne))
    return moe


def randomize_norms(model: nn.Module, scale: float = 1.0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (output scale ~``scale``): eval-mode BN is exercised."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5).mul_(scale)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def fmap(c: int):
    return lambda b, h, w: torch.randn(b, c, h, w)


def text(b, h, w):
    return torch.randn(b, NC, D)


def image(b, h, w):
    return torch.rand(b, 3, h, w)


def geometry(b, h, w):
    """Stage 5 output G: 16 tangent channels and NC non-negative distance maps."""
    return torch.cat([torch.randn(b, 16, h, w), torch.rand(b, NC, h, w) * 3], 1)


def space_broadcast():
    m = SpaceBroadcast([C, 16 + NC, D], C, nc=NC)
    nn.init.normal_(m.offset[1].weight, std=0.05)  # zero-initialised: move the sampling points off the regular grid
    return ListInput(randomize_norms(m))


def hyperbolic(manifold: str = "poincare", scale: float = 1.0):
    """HyperbolicAlign on unit-scale features (clipped to the 0.98 ball) and unit-scale texts (see
    test_hyperbolic_near_boundary_is_as_accurate_as_pytorch for anchors at the clipping radius)."""
    return ListInput(randomize_norms(HyperbolicAlign([C, D], n=16, nc=NC, manifold=manifold), scale))


# id: (factory, input makers (b, h, w) -> tensor, input names, output names[, (B, H, W) traced, checked])
CASES = {
    "AnisotropicDSConv": (lambda: randomize_norms(AnisotropicDSConv(C, level=2)), [fmap(C)], ["x"], ["y"]),
    "AnisotropicDSConv-odd": (  # odd sizes: ceil-mode pooling and nearest upsampling back to H x W
        lambda: randomize_norms(AnisotropicDSConv(C, level=3)),
        [fmap(C)],
        ["x"],
        ["y"],
        (1, 13, 17),
        (2, 19, 23),
    ),
    "DSCBAM": (lambda: DSCBAM(C), [fmap(C)], ["x"], ["y"]),
    "ClassText": (lambda: ClassText(C, D, NC, d_t=64), [fmap(C)], ["x"], ["t"]),
    "SemanticDistill": (lambda: SemanticDistill(D, heads=8), [text], ["t"], ["t_hat"]),
    "HyperbolicAlign": (hyperbolic, [fmap(C), text], ["f", "t"], ["g"]),
    "HyperbolicAlign-euclidean": (lambda: hyperbolic("euclidean"), [fmap(C), text], ["f", "t"], ["g"]),
    "SpaceBroadcast": (space_broadcast, [fmap(C), geometry, text], ["f", "g", "t"], ["y"]),
    "ExpertRouter": (
        lambda: ExpertRouter(C, D, ne=8, k=3),
        [fmap(C), text],
        ["f", "t"],
        ["probs", "idx", "gates", "expert_text"],
    ),
    "SparseMoE": (
        lambda: RoutedMoE(SparseMoE([C, D], C, ne=8, k=3)),
        [fmap(C), text],
        ["f", "t"],
        ["y", "idx", "gates"],
    ),
    "SparseMoE-bias": (  # loss-free balancing: the selection bias must select in ONNX Runtime as in PyTorch
        lambda: RoutedMoE(biased(SparseMoE([C, D], C, ne=8, k=3, balance="bias"))),
        [fmap(C), text],
        ["f", "t"],
        ["y", "idx", "gates"],
    ),
    "SparseMoE-regions": (  # per-region routing, 3 x 3 grid: traced 12 x 16 and checked 20 x 28 maps pad by different amounts
        lambda: RoutedMoE(SparseMoE([C, D], C, ne=8, k=3, regions=3)),
        [fmap(C), text],
        ["f", "t"],
        ["y", "idx", "gates"],
    ),
    "SparseMoE-affinity": (  # per-pixel class affinity in the routing score
        lambda: RoutedMoE(SparseMoE([C, D], C, ne=8, k=3, affinity=1)),
        [fmap(C), text],
        ["f", "t"],
        ["y", "idx", "gates"],
    ),
    "SparseMoE-background": (  # per region with the background anchor: the padding mask and the max over pixels
        lambda: RoutedMoE(SparseMoE([C, D], C, ne=8, k=3, regions=3, affinity=2)),
        [fmap(C), text],
        ["f", "t"],
        ["y", "idx", "gates"],
    ),
    "SparseMoE-fofs": (  # each expert reads its own channels: the mask travels with the gathered weights
        lambda: RoutedMoE(SparseMoE([C, D], C, ne=8, k=3, fofs=1)),
        [fmap(C), text],
        ["f", "t"],
        ["y", "idx", "gates"],
    ),
    "SparseMoE-pixel-text": (  # per region, the cross experts' text per pixel from G's distance maps
        lambda: RoutedMoE(SparseMoE([C, D, 16 + NC], C, ne=8, k=3, regions=3)),
        [fmap(C), text, geometry],
        ["f", "t", "g"],
        ["y", "idx", "gates"],
    ),
    "ExpertEnsemble": (
        lambda: ListInput(randomize_norms(ExpertEnsemble([C, C, D], C))),
        [fmap(C), fmap(C), text],
        ["fg", "fb", "t"],
        ["y"],
    ),
    "ExpertEnsemble-pixel-text": (
        lambda: ListInput(randomize_norms(ExpertEnsemble([C, C, D, 16 + NC], C))),
        [fmap(C), fmap(C), text, geometry],
        ["fg", "fb", "t", "g"],
        ["y"],
    ),
    "FeatureAggregate": (lambda: ListInput(FeatureAggregate([C, C], C)), [fmap(C), fmap(C)], ["fe", "fm"], ["y"]),
    "MobileSAMEncoder": (
        lambda: randomize_norms(MobileSAMEncoder(3, "none")),
        [image],
        ["images"],
        ["p2", "p3", "p4"],
        (1, 64, 96),
        (2, 96, 128),
    ),
    "HybridEncoder": (
        lambda: randomize_norms(HybridEncoder(3, "none", 0.5, 8)),
        [image],
        ["images"],
        ["p2", "p3", "p4"],
        (1, 64, 96),
        (2, 96, 128),
    ),
}


def as_list(y) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (list, tuple)) else [y]


def export(model: nn.Module, inputs: list, input_names: list, output_names: list, dynamic_axes: dict) -> bytes:
    """ONNX bytes of ``model`` traced on ``inputs``; fails on any TracerWarning (a tensor became a Python value)."""
    f = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            model,
            tuple(inputs),
            f,
            opset_version=18,
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    tracer = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if w.category is torch.jit.TracerWarning]
    assert not tracer, "TracerWarnings while exporting:\n" + "\n".join(tracer)
    return f.getvalue()


def run_onnx(onnx_bytes: bytes, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def axes_for(names: list[str], tensors: list[torch.Tensor]) -> dict:
    """Batch (and H, W of feature maps) dynamic for every named input and output."""
    return {n: FMAP_AXES if x.dim() == 4 else TEXT_AXES for n, x in zip(names, tensors)}


def max_diffs(names: list[str], expected: list[torch.Tensor], got: list[np.ndarray]) -> dict[str, float]:
    """Max abs difference per output; integer outputs (top-k indices) must be equal."""
    assert len(expected) == len(got)
    diffs = {}
    for name, e, g in zip(names, expected, got):
        g = torch.from_numpy(g)
        assert e.shape == g.shape, f"{name}: shape {tuple(g.shape)} from ONNX, {tuple(e.shape)} from PyTorch"
        if e.dtype.is_floating_point:
            diffs[name] = float((e - g).abs().max())
        else:
            assert torch.equal(e, g.to(e.dtype)), f"{name} differs:\nONNX {g.tolist()}\nPyTorch {e.tolist()}"
            diffs[name] = 0.0
    return diffs


@pytest.mark.parametrize("case", list(CASES))
def test_block_export_matches_on_new_shape(case):
    factory, makers, input_names, output_names, *shapes = CASES[case]
    trace_shape, check_shape = shapes or (TRACE, CHECK)
    torch.manual_seed(0)
    model = factory().eval()
    trace_inputs = [m(*trace_shape) for m in makers]
    check_inputs = [m(*check_shape) for m in makers]
    with torch.no_grad():
        traced = as_list(model(*trace_inputs))
        expected = as_list(model(*check_inputs))
    axes = axes_for(input_names + output_names, trace_inputs + traced)
    aux = {m: m.saved for m in model.modules() if isinstance(m, AuxLossBlock)}  # SparseMoE, FeatureAggregate

    got = run_onnx(export(model, trace_inputs, input_names, output_names, axes), dict(zip(input_names, check_inputs)))
    assert all(m.saved is saved for m, saved in aux.items()), "tracing overwrote what the auxiliary losses use"
    diffs = max_diffs(output_names, expected, got)
    print(f"{case}: max abs diff {diffs}")
    assert max(diffs.values()) <= TOL, f"{case}: ONNX differs from PyTorch on (B, H, W) = {check_shape}: {diffs}"
    if case.startswith("SparseMoE"):  # routing is per unit (image or region): the units must not all share one set
        idx = expected[1].sort(-1).values  # (U, k)
        assert (idx != idx[:1]).any(), "degenerate check: every routed unit went to the same experts"


def test_hyperbolic_near_boundary_is_as_accurate_as_pytorch():
    """Unit-scale features and long text vectors: visual points and anchors sit at the clipping radius, on opposite
    sides, so |-t (+) p| comes within ~2e-4 of 1 and artanh amplifies one fp32 ulp of that norm ~2500-fold. There
    PyTorch itself is ~1e-3 away from float64, and two fp32 runtimes cannot agree to 1e-4 whatever the export. So:
    where PyTorch's own fp32 error is below 1e-4, ONNX must match PyTorch to 1e-4; beyond, the export must be as
    accurate as PyTorch (its error against float64 at most twice PyTorch's)."""
    torch.manual_seed(0)
    block = randomize_norms(HyperbolicAlign([C, D], n=16, nc=NC)).eval()
    model = ListInput(block)
    trace_inputs = [fmap(C)(*TRACE), text(*TRACE)]
    f, t = fmap(C)(*CHECK), text(*CHECK) * 30
    with torch.no_grad():
        y32 = model(f, t)
        y64 = copy.deepcopy(block).double().align(f.double(), t.double())  # the same block in float64
    axes = {"f": FMAP_AXES, "t": TEXT_AXES, "g": FMAP_AXES}
    (y_onnx,) = run_onnx(export(model, trace_inputs, ["f", "t"], ["g"], axes), {"f": f, "t": t})
    y_onnx = torch.from_numpy(y_onnx)
    diff = float((y_onnx - y32).abs().max())
    err_torch, err_onnx = (float((y.double() - y64).abs().max()) for y in (y32, y_onnx))
    print(f"HyperbolicAlign near the boundary: |ONNX - PyTorch| {diff:.3g}; error vs float64: PyTorch {err_torch:.3g}, "
          f"ONNX {err_onnx:.3g}")
    if err_torch <= TOL:
        assert diff <= TOL
    else:
        assert err_onnx <= 2 * err_torch + TOL


class DetectorOutputs(nn.Module):
    """Decoded predictions, raw box and class outputs of the head, and the SparseMoE top-k experts of a detector."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        moe = next(m for m in model.modules() if isinstance(m, SparseMoE))
        moe.router.register_forward_hook(lambda m, args, out: setattr(self, "routed", out[1]))

    def forward(self, x: torch.Tensor):
        y, raw = self.model(x)
        return y, raw["boxes"], raw["scores"], self.routed


def test_detection_model_export_matches_on_new_shape():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    detector = DetectionModel("dsmoe-n.yaml", nc=4, verbose=False).eval()
    detector.model[-1].dynamic = True  # anchors follow the input size (what Ultralytics' exporter sets for dynamic)
    model = DetectorOutputs(detector)
    names = ["y", "boxes", "scores", "experts"]
    axes = {"images": FMAP_AXES, **{n: TEXT_AXES for n in names}}
    axes.update(y={0: "batch", 2: "anchors"}, boxes={0: "batch", 2: "anchors"}, scores={0: "batch", 2: "anchors"})
    x = image(2, 96, 128)
    with torch.no_grad():
        expected = list(model(x))
    got = run_onnx(export(model, [image(1, 64, 64)], ["images"], names, axes), {"images": x})
    diffs = max_diffs(names, expected, got)
    print(f"DetectionModel: max abs diff {diffs}")
    assert expected[0].shape == (2, 4 + 4, (12 * 16) + (6 * 8) + (3 * 4))
    assert diffs["boxes"] <= TOL and diffs["scores"] <= TOL
    # decoded boxes are pixel coordinates (hundreds): fp32 resolves ~3e-5 there, so compare them relatively
    assert diffs["y"] <= TOL * max(1.0, float(expected[0].abs().max()))
