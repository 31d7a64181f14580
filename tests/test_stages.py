"""The ten DS-MoE stages: reference numerics, gradients, text steering, per-stage ablation, fp16 and extreme inputs."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils import DEFAULT_CFG
from ultralytics_dsmoe.costs import count_flops, set_experts
from ultralytics_dsmoe.nn import (
    BLOCKS,
    AnisotropicDSConv,
    ClassText,
    DSCBAM,
    ExpertEnsemble,
    FeatureAggregate,
    HyperbolicAlign,
    HybridEncoder,
    MobileSAMEncoder,
    SemanticDistill,
    SpaceBroadcast,
    SparseMoE,
)
from ultralytics_dsmoe.nn.moe import update_selection_biases

STAGED = [name for name, b in BLOCKS.items() if b.stages and b.rule is not None]  # YAML blocks that implement stages


def build(ne=32, k=5, nc=4, seed=0, pixel_text=False, **overrides):
    """dsmoe-n with the SparseMoE row's Ne and k replaced (and with the pixel text: Stage 5's G, layer 9, fed to
    Stages 8 and 9 as well)."""
    d = set_experts(yaml_model_load("dsmoe-n.yaml"), ne=ne, topk=k)
    for row in d["backbone"] if pixel_text else []:
        if row[2] in ("SparseMoE", "ExpertEnsemble"):
            row[0] = [*row[0], 9]
    d.update(overrides)
    torch.manual_seed(seed)
    model = DetectionModel(d, nc=nc, verbose=False)
    model.args = DEFAULT_CFG
    return model


def blocks(model, cls):
    return [m for m in model.modules() if isinstance(m, cls)]


def batch(n=4, size=96):
    g = torch.Generator().manual_seed(1)
    return {
        "img": torch.rand(n, 3, size, size, generator=g),
        "batch_idx": torch.arange(n, dtype=torch.float32),
        "cls": torch.arange(n, dtype=torch.float32).remainder(4).view(-1, 1),
        "bboxes": torch.tensor([[0.5, 0.5, 0.9, 0.8], [0.3, 0.6, 0.2, 0.5], [0.5, 0.5, 0.1, 0.1], [0.6, 0.4, 0.7, 0.9]])[:n],
    }


def detect_out(model, img):
    """The features the Detect head receives, in train mode (batch statistics: a fresh model's BN running stats make
    eval-mode activations vanish, and decoded boxes at init are dominated by the head's priors)."""
    seen = {}
    handle = model.model[-1].register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    model.train()
    try:
        with torch.no_grad():
            model(img)
    finally:
        handle.remove()
    return torch.cat([f.flatten(1) for f in seen["x"]], 1)


def changed(out, ref, rel=1e-3):
    return ((out - ref).abs().max() / ref.abs().max()).item() > rel


@pytest.fixture(scope="module")
def model():
    return build()


# ----------------------------------------------------------------------------------------------- reference numerics


def test_semantic_distill_equals_torch_multihead_attention():
    """Eq. 2 with h = 8 is exactly LayerNorm(T + nn.MultiheadAttention(T, T, T))."""
    torch.manual_seed(0)
    block = SemanticDistill(64, heads=8)
    mha = torch.nn.MultiheadAttention(64, 8, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.qkv.weight), mha.in_proj_bias.copy_(block.qkv.bias)
        mha.out_proj.weight.copy_(block.out.weight), mha.out_proj.bias.copy_(block.out.bias)
    t = torch.randn(3, 5, 64)
    ref = block.norm(t + mha(t, t, t, need_weights=False)[0])
    torch.testing.assert_close(block(t), ref, atol=1e-5, rtol=1e-5)


def test_cbam_matches_equations_6_to_8():
    torch.manual_seed(0)
    block, x = DSCBAM(32), torch.randn(2, 32, 6, 7)
    mlp = block.mlp
    ch = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))  # eq. 7
    y = x * ch
    sp = torch.sigmoid(block.spatial(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)))  # eq. 8
    torch.testing.assert_close(block(x), y * sp)  # eq. 6
    assert block.spatial.kernel_size == (7, 7)


def test_anisotropic_dsconv_factorisation_and_resolution_gate():
    torch.manual_seed(0)
    block = AnisotropicDSConv(16, level=3, k=3, n=2)
    kx1, k1x = block.terms[0]
    assert kx1.kernel_size == (3, 1) and k1x.kernel_size == (1, 3) and kx1.dilation == (4, 1)  # r = 2^(l-1)
    # eq. 4: 2k instead of k^2 weights per factorised term and channel
    assert sum(p.numel() for p in block.terms[0].parameters()) == 16 * 2 * 3
    flat, edges = torch.ones(1, 16, 12, 12), torch.zeros(1, 16, 12, 12)
    edges[..., torch.arange(12) % 4 < 2] = 50.0  # stripes 2 px wide: strong gradient in every column
    assert block.resolution_gate(flat).max() == 0  # smooth: s_l = 1, full resolution only
    assert block.resolution_gate(edges)[..., 2:-2, 2:-2].min() == 1  # E|grad| >> theta: s_l >= 2, coarse path
    y = block.psi(sum(t(flat) for t in block.terms))
    torch.testing.assert_close(block(flat), flat + y)
    x = torch.randn(2, 16, 11, 13)  # eq. 4 as written (k x 1 then 1 x k per term) equals the one summed kernel
    y = block.psi(sum(t(x) for t in block.terms))
    coarse = F.interpolate(F.avg_pool2d(y, 2, 2, ceil_mode=True), size=y.shape[-2:], mode="nearest")
    a = block.resolution_gate(x)
    torch.testing.assert_close(block(x), x + (1 - a) * y + a * coarse, rtol=1e-5, atol=1e-5)
    block(x).square().sum().backward()
    assert all(t.weight.grad.abs().sum() > 0 for term in block.terms for t in term)  # every factor learns


def test_space_broadcast_reduces_to_depthwise_conv_on_a_regular_grid():
    """Zero offsets, unit dilation and unit masks: the scale-1 sampling points are a plain depthwise 3x3 conv."""
    torch.manual_seed(0)
    block = SpaceBroadcast([8, 6 + 2, 16], 16, nc=2).eval()
    f, t = torch.randn(2, 8, 7, 9), torch.randn(2, 2, 16)
    geo = torch.cat([torch.randn(2, 6, 7, 9), torch.zeros(2, 2, 7, 9)], 1)  # zero distances -> dilation exactly 1
    kernel = torch.zeros_like(block.kernel)
    kernel[:, 9:18] = torch.randn(kernel.shape[0], 9)  # scale 1 only
    with torch.no_grad():
        block.kernel.copy_(kernel)
        block.mask.weight.zero_(), block.mask.bias.fill_(50.0)  # sigmoid -> 1
    captured = {}
    block.psi.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    block([f, geo, t])
    v = block.value(torch.cat([f, block.gamma(geo[:, :6])], 1))
    ref = F.conv2d(v, kernel[:, 9:18].reshape(-1, 1, 3, 3), padding=1, groups=v.shape[1])
    torch.testing.assert_close(captured["x"], ref, atol=1e-5, rtol=1e-4)


def test_alignment_loss_closed_form_equals_autograd():
    torch.manual_seed(0)
    block = FeatureAggregate([12, 12], 10)
    fe, fm = torch.randn(2, 12, 5, 6, requires_grad=True), torch.randn(2, 12, 5, 6, requires_grad=True)
    out = block([fe, fm])
    ge, gm = torch.autograd.grad(out.sum(), [fe, fm])  # per-pixel channel sums are independent across pixels
    torch.testing.assert_close(block.aux_losses()["align_loss"], (1 - F.cosine_similarity(ge, gm, dim=1)).mean())
    assert block.aux_losses()["align_loss"].requires_grad  # trains W_a and W_o


def test_balance_loss_is_one_when_uniform_and_grows_when_collapsed():
    moe = SparseMoE([16, 8], 16, ne=4, k=1)
    uniform = torch.full((4, 4), 0.25)
    assert moe.balance_loss(uniform, torch.arange(4).view(4, 1)).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).repeat(4, 1)
    assert moe.balance_loss(collapsed, torch.zeros(4, 1, dtype=torch.long)).item() == pytest.approx(4 * 0.97)


def test_collapsed_routing_costs_more_than_balanced_routing_at_every_temperature():
    """The balance term is computed at the router's fixed initial temperature: raising the learned tau (flatter
    probabilities, same routing) cannot lower it, and collapsed routing always costs more than balanced routing."""
    torch.manual_seed(0)
    moe = SparseMoE([16, 8], 16, ne=8, k=1)
    cos = torch.rand(64, 8) * 0.2
    collapsed_cos = cos.clone()
    collapsed_cos[:, 3] = 0.9  # every image's best expert is 3
    balanced_cos = cos.clone()
    balanced_cos[torch.arange(64), torch.arange(64) % 8] = 0.9  # each expert is best for 8 images
    costs = {}
    for tau in (0.03, 0.1, 1.0, 10.0):
        moe.router.log_tau.data.fill_(math.log(tau))
        for name, c in (("collapsed", collapsed_cos), ("balanced", balanced_cos)):
            moe.saved = (c, c.topk(1, -1).indices, torch.randn(64, 1, 16, 2, 2))
            costs[name, tau] = moe.aux_losses()["moe_loss"].item()
    for tau in (0.03, 1.0, 10.0):  # the learned temperature does not enter the term
        assert costs["collapsed", tau] == costs["collapsed", 0.1] and costs["balanced", tau] == costs["balanced", 0.1]
    assert costs["collapsed", 0.1] > 5 * costs["balanced", 0.1]


def test_loss_free_bias_spreads_collapsed_routing():
    """DeepSeek-V3 bias balancing: images that all prefer experts 0-1 by a margin, but differ among themselves, spread
    over every expert once overloaded experts' selection bias has fallen and underloaded ones' has risen."""
    torch.manual_seed(0)
    router = SparseMoE([16, 8], 16, ne=8, k=2, balance="bias").router
    logits = torch.randn(64, 8)
    logits[:, :2] += 3  # experts 0-1 ahead for every image
    probs = logits.softmax(-1)
    share = lambda idx: torch.nn.functional.one_hot(idx, 8).sum((0, 1)).float() / idx.numel()  # noqa: E731
    assert share(router.select(probs))[:2].sum() > 0.75  # collapsed before balancing
    for _ in range(300):
        router.count_load(router.select(probs))
        router.update_bias()
    after = share(router.select(probs))
    assert (after > 0).all() and after.max() <= 0.2, after  # every expert in use, none above 20% (uniform: 12.5%)


def test_selection_bias_is_updated_by_training_forwards_only_and_never_weights_outputs():
    torch.manual_seed(0)
    router = SparseMoE([16, 8], 16, ne=8, k=2, balance="bias").router
    f, t = torch.randn(8, 16, 4, 4), torch.randn(8, 3, 8)
    router.eval()(f, t)
    update_selection_biases(router)
    assert router.select_bias.abs().max() == 0  # evaluation counts no load
    router.train()(f, t)
    assert router.select_bias.abs().max() == 0  # a forward only counts; the bias moves after the optimiser step
    update_selection_biases(router)
    assert router.select_bias.abs().max() == router.bias_rate  # one step: +-bias_rate (or 0 at the mean load)
    assert router.load is None  # the counted load was used up
    router.select_bias.copy_(torch.linspace(-0.2, 0.2, 8))
    probs, idx, gates, _ = router(f, t)
    chosen = probs.gather(1, idx)
    torch.testing.assert_close(gates, chosen / chosen.sum(-1, keepdim=True))  # gates: the router's own probabilities
    assert not router.select_bias.requires_grad
    switch = SparseMoE([16, 8], 16, ne=8, k=2).router.train()
    switch(f, t)
    update_selection_biases(switch)
    assert switch.select_bias.abs().max() == 0  # 'switch' balancing never moves it


# ------------------------------------------------------------------------------------------------ sparse routing


def test_each_sample_runs_exactly_k_experts_and_only_they_learn():
    torch.manual_seed(0)
    moe = SparseMoE([32, 16], 32, ne=16, k=3)
    f, t = torch.randn(5, 32, 6, 6), torch.randn(5, 4, 16)
    out = moe([f, t])
    probs, idx = moe.last_routing
    assert idx.shape == (5, 3) and all(len(set(row.tolist())) == 3 for row in idx)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    out.sum().backward()
    used = set(idx.flatten().tolist())
    row_grad = moe.weight.grad.flatten(1).abs().sum(1)
    assert {e for e in range(16) if row_grad[e] > 0} == used  # unrouted experts' projections never ran


def geometry_map(b, n, nc, h, w):
    """A Stage 5 output G: n tangent channels and nc non-negative distance maps."""
    return torch.cat([torch.randn(b, n, h, w), torch.rand(b, nc, h, w) * 3], 1)


@pytest.mark.parametrize("pixel_text", [False, True])
def test_moe_output_is_the_gated_sum_of_its_chosen_experts(pixel_text):
    """Dense reference: run every expert on every sample, keep the top-k with renormalised weights. Cross-modal
    experts add W_t^(j) T_j, or with the pixel text W_t^(j) sum_c a_c(p) T_hat_c, a = softmax_c(-d_H / tau)."""
    torch.manual_seed(0)
    moe = SparseMoE([16, 8, 4 + 2] if pixel_text else [16, 8], 16, ne=6, k=2)
    f, t, g = torch.randn(3, 16, 5, 5), torch.randn(3, 2, 8), geometry_map(3, 4, 2, 5, 5)
    if pixel_text:
        moe.text_log_tau.data.fill_(-0.5)
    out = moe([f, t, g] if pixel_text else [f, t])
    probs, idx, gates, text = moe.router(f, t)
    inputs = moe.expert_inputs(f)  # (B, 3, c, H, W)
    a = F.softmax(-g[:, 4:] / math.exp(-0.5), dim=1)  # (B, nc, H, W)
    ref = torch.zeros_like(out)
    for b in range(3):
        for j, e in enumerate(idx[b].tolist()):
            kind = int(moe.kind[e])
            y = torch.einsum("oc,chw->ohw", moe.weight[e], inputs[b, kind]) + moe.bias[e][:, None, None]
            if kind == 2:  # cross-modal, eq. 24: expert e's text, or each pixel's
                pixel = torch.einsum("chw,cd->dhw", a[b], t[b])  # (d, H, W)
                y = y + (torch.einsum("od,dhw->ohw", moe.text_weight[e], pixel) if pixel_text
                         else (moe.text_weight[e] @ text[b, e])[:, None, None])
                y = F.layer_norm(y.permute(1, 2, 0), (16,), moe.ln_weight[e], moe.ln_bias[e], 1e-5).permute(2, 0, 1)
            ref[b] += gates[b, j] * y
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def moe_flops(ne, k, c=64, hw=16, regions=1, pixel_text=False):
    moe = SparseMoE([c, 32, 8 + 4] if pixel_text else [c, 32], c, ne=ne, k=k, regions=regions).eval()
    x = [torch.randn(2, c, hw, hw), torch.randn(2, 4, 32)] + [geometry_map(2, 8, 4, hw, hw)] * pixel_text
    gflops = count_flops(lambda: moe(x))[0]
    return round(gflops * 1e9)  # the exact integer count: the equalities below compare FLOP differences exactly


@pytest.mark.parametrize("regions,pixel_text", [(1, False), (4, False), (4, True)])
def test_moe_flops_grow_with_k_not_with_ne(regions, pixel_text):
    """Per image and per region of a 4 x 4 grid alike, with the text per expert or per pixel: each routed unit runs
    k experts over its own cells."""
    flops = functools.partial(moe_flops, regions=regions, pixel_text=pixel_text)
    per_expert = (flops(32, 4) - flops(32, 2)) / 2
    assert per_expert > 0
    assert flops(32, 8) - flops(32, 4) == pytest.approx(4 * per_expert, rel=0.01)  # linear in k
    # Ne only adds router keys (an MLP per expert text and routed unit): a cost that does not grow with the image
    ne_cost = flops(32, 2) - flops(8, 2)
    assert flops(32, 2, hw=32) - flops(8, 2, hw=32) == ne_cost
    # an expert's cost scales with the pixels it runs on, up to its text shift: one per routed unit, or with the pixel
    # text its nc products W_t^(j) T_hat_c (here 8% of its cost on a region of 4 x 4 cells)
    assert flops(32, 4, hw=32) - flops(32, 2, hw=32) == pytest.approx(4 * 2 * per_expert, rel=0.03 + 0.07 * pixel_text)
    assert flops(32, 5, hw=32) <= 0.25 * flops(32, 32, hw=32)
    if regions > 1:  # the experts cost what they cost per image, up to the text shift added once per routed unit
        per_image = (moe_flops(32, 4, pixel_text=pixel_text) - moe_flops(32, 2, pixel_text=pixel_text)) / 2
        assert per_expert == pytest.approx(per_image, rel=0.05 + 0.07 * pixel_text)


def test_ensemble_pixel_text_is_the_text_of_the_class_each_pixel_is_near():
    """Stage 9's cross stream with G: sum_c a_c(p) W T_hat_c at each pixel. Equidistant anchors give back the class-mean
    text of the block without G; a pixel next to one anchor carries that class's text."""
    torch.manual_seed(0)
    mean_block, pixel_block = ExpertEnsemble([8, 8, 6], 8).eval(), ExpertEnsemble([8, 8, 6, 4 + 3], 8).eval()
    pixel_block.load_state_dict(mean_block.state_dict(), strict=False)  # all but its temperature
    fg, fb, t = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 5, 6), torch.randn(2, 3, 6)
    g = geometry_map(2, 4, 3, 5, 6)
    g[:, 4:] = 1.7  # every pixel as far from each anchor
    torch.testing.assert_close(pixel_block([fg, fb, t, g]), mean_block([fg, fb, t]))
    near = torch.randint(0, 3, (2, 5, 6))
    g[:, 4:] = 30 * (1 - F.one_hot(near, 3).permute(0, 3, 1, 2).float())  # pixel p: distance 0 to class near(p) only
    seen = {}
    pixel_block.cross.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    pixel_block([fg, fb, t, g])
    per_class = pixel_block.text(t)  # (B, nc, dt)
    expected = torch.stack([per_class[b, near[b]] for b in range(2)]).permute(0, 3, 1, 2)  # (B, dt, H, W)
    torch.testing.assert_close(seen["x"][:, 8:], expected)


def test_pixel_text_makes_the_cross_experts_text_depend_on_the_image():
    """With the visual projections zeroed, a cross-modal expert outputs LayerNorm(bias + its text term). Without G that
    is one vector per expert, the same at every pixel of every image: a bias. With G it follows each pixel's class
    assignment, so it differs between images and pixels, and new prompts move it (issue 13: text that meets the
    image)."""
    torch.manual_seed(0)
    moe = SparseMoE([16, 8, 4 + 3], 16, ne=4, k=4).eval()  # k = Ne: every expert runs
    moe.weight.data.zero_()
    f, g = torch.randn(2, 16, 5, 5), geometry_map(2, 4, 3, 5, 5)
    t = torch.randn(1, 3, 8).expand(2, -1, -1)  # T_hat: the same for every image
    inputs, _ = moe.routed_units(f)
    every = torch.arange(4).expand(2, -1)
    with torch.no_grad():
        const = moe.experts(inputs, every, moe.router.expert_text(t))[:, 2:]  # (B, 2 cross experts, c2, H, W)
        pixel = moe.experts(inputs, every, *moe.unit_text(t, [g]))[:, 2:]
        moved = moe.experts(inputs, every, *moe.unit_text(t + torch.randn(1, 3, 8), [g]))[:, 2:]

    def spread(y):  # the largest difference to image 0's top-left pixel
        return (y - y[:1, :, :, :1, :1]).abs().amax()

    assert spread(const) < 1e-5
    assert spread(pixel) > 1e-2
    assert (moved - pixel).abs().amax() > 1e-2


def test_regions_split_and_merge_are_inverse_on_any_map_size():
    from ultralytics_dsmoe.nn.moe import merge_regions, split_regions

    x = torch.randn(2, 3, 10, 7)
    parts = split_regions(x, 3, 3)  # regions of ceil(10/3) x ceil(7/3) = 4 x 3 cells, zero-padded
    assert parts.shape == (18, 3, 4, 3)
    torch.testing.assert_close(parts[4], x[0, :, 4:8, 3:6])  # image 0, grid row 1, column 1
    assert parts[8, :, 2:].abs().sum() == 0 and parts[8, :, :, 1:].abs().sum() == 0  # bottom-right: padding only
    torch.testing.assert_close(merge_regions(parts, 3, 3, 10, 7), x)
    assert split_regions(x, 1, 3) is x and merge_regions(x, 1, 3, 10, 7) is x


def test_each_region_is_routed_on_its_own_content():
    """Per-region routing: changing the features of one region changes that region's router probabilities only,
    and two regions of one image can go to different experts."""
    torch.manual_seed(0)
    moe = SparseMoE([16, 8], 16, ne=8, k=2, regions=2).eval()
    f, t = torch.randn(1, 16, 8, 8), torch.randn(1, 3, 8)
    moe([f, t])
    probs, idx = moe.last_routing  # (4 regions, Ne), (4, k)
    assert probs.shape == (4, 8) and len({tuple(sorted(r.tolist())) for r in idx}) > 1
    g = f.clone()
    g[..., :4, 4:] = torch.randn(1, 16, 4, 4) * 3  # grid row 0, column 1
    moe([g, t])
    changed = (moe.last_routing[0] - probs).abs().amax(1) > 1e-6
    assert changed.tolist() == [False, True, False, False]


def test_class_affinity_routes_units_towards_experts_of_the_classes_their_pixels_resemble():
    """affinity=True: a unit whose pixels match class c's text adds beta * pi_i[c] to expert i's score (pi_i: the
    expert's class mixture), so the prompts move different images' routing differently; its weights learn."""
    from ultralytics_dsmoe.nn import ExpertRouter

    torch.manual_seed(0)
    router = ExpertRouter(8, 8, ne=6, k=2, dg=8, affinity=True).eval()
    plain = ExpertRouter(8, 8, ne=6, k=2, dg=8).eval()
    plain.load_state_dict(router.state_dict(), strict=False)  # the same router without the term
    with torch.no_grad():
        router.pixel.weight.copy_(torch.eye(8)[..., None, None]), router.pixel.bias.zero_()
        router.anchor.weight.copy_(torch.eye(8)), router.anchor.bias.zero_()
    t = (5 * torch.eye(8)[:2]).expand(2, -1, -1)  # two class texts along e0 and e1
    f = torch.zeros(2, 8, 4, 4)
    f[0, 0], f[1, 1] = 1.0, 1.0  # image 0 looks like class 0 everywhere, image 1 like class 1
    abar = router.class_affinity(f, t)
    torch.testing.assert_close(abar, torch.eye(2), atol=1e-3, rtol=0)
    router(f, t), plain(f, t)
    mix = router.class_mixture(t)  # (B, Ne, nc)
    torch.testing.assert_close(router.cos - plain.cos, mix[:, :, 0] * torch.tensor([[1.0], [0.0]]) +
                               mix[:, :, 1] * torch.tensor([[0.0], [1.0]]), atol=1e-3, rtol=0)
    moe = SparseMoE([16, 8], 16, ne=6, k=2, affinity=1)
    moe([torch.randn(3, 16, 5, 5), torch.randn(3, 2, 8)]).square().sum().backward()
    assert moe.router.pixel.weight.grad.abs().sum() > 0 and moe.router.beta.grad.abs() > 0


def test_background_anchor_lets_a_unit_of_background_hold_no_class_and_a_pinhole_its_own():
    """affinity=2: nc + 1 choices per pixel, the last the background anchor; abar_c is the max over the unit's pixels
    of class c's share (a pinhole of one cell is the unit's class c), background pixels add to no class, and the
    region grid's zero padding is left out. The anchor learns."""
    from ultralytics_dsmoe.nn import ExpertRouter

    torch.manual_seed(0)
    router = ExpertRouter(8, 8, ne=6, k=2, dg=8, affinity=2).eval()
    with torch.no_grad():
        router.pixel.weight.copy_(torch.eye(8)[..., None, None]), router.pixel.bias.zero_()
        router.anchor.weight.copy_(torch.eye(8)), router.anchor.bias.zero_()
        router.background_anchor.copy_(torch.eye(8)[7])
    t = (5 * torch.eye(8)[:2]).expand(3, -1, -1)  # class texts along e0 and e1; the background along e7
    f = torch.zeros(3, 8, 4, 4)
    f[:, 7] = 1.0  # background everywhere ...
    f[1, :, 2, 3] = torch.eye(8)[1]  # ... but one cell of class 1 in unit 1
    f[2, :, 3] = 0.0  # unit 2: its last row is the grid's zero padding
    abar = router.class_affinity(f, t)
    torch.testing.assert_close(abar, torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), atol=1e-3, rtol=0)
    p = F.normalize(router.pixel(f), dim=1)  # by hand: softmax over [anchors, background], max over real pixels
    a = torch.cat([F.normalize(router.anchor(t), dim=-1), torch.eye(8)[7].expand(3, 1, -1)], 1)
    probs = (torch.einsum("bghw,bcg->bchw", p, a) / 0.1).softmax(1)[:, :2]
    probs[2, :, 3] = 0
    torch.testing.assert_close(abar, probs.amax((2, 3)))
    assert router.pixel_logits.shape == (3, 3, 4, 4)
    with pytest.raises(ValueError, match="background anchor"):
        ExpertRouter(8, 8, affinity=3)
    moe = SparseMoE([16, 8], 16, ne=6, k=2, regions=2, affinity=2)
    moe([torch.randn(3, 16, 5, 5), torch.randn(3, 2, 8)]).square().sum().backward()
    assert moe.ground_logits.shape == (3, 3, 5, 5) and moe.router.background_anchor.grad.abs().sum() > 0


def test_etf_loss_is_the_gram_matrix_error_to_the_simplex_frame():
    """moe_etf against a per-pixel loop; zero for outputs that form the simplex frame, and larger for copies."""
    torch.manual_seed(0)
    moe = SparseMoE([16, 8], 4, ne=4, k=3)
    y = torch.randn(2, 3, 4, 3, 5)
    ref = []
    for b in range(2):
        for i in range(3):
            for j in range(5):
                u = F.normalize(y[b, :, :, i, j], dim=1)  # (k, c2)
                target = torch.full((3, 3), -1 / 3).fill_diagonal_(1.0)
                ref.append((u @ u.T - target).pow(2).mean())
    torch.testing.assert_close(moe.etf_loss(y), torch.stack(ref).mean())
    simplex = torch.eye(4) - 0.25  # 4 centred basis vectors: pairwise cosine -1/3 = -1/(Ne - 1)
    frame = simplex[:3, :, None, None].expand(1, 3, 4, 1, 1).clone()
    assert moe.etf_loss(frame) < 1e-10
    assert moe.etf_loss(frame[:, :1].expand(-1, 3, -1, -1, -1)) > 0.5  # three copies of one expert


def test_fofs_gives_each_expert_only_its_own_channels():
    """fofs=1: an expert's output depends on its 1/Ne of the input channels only, for all three expert kinds."""
    torch.manual_seed(0)
    moe = SparseMoE([16, 8], 8, ne=4, k=4, fofs=1).eval()
    f, t = torch.randn(1, 16, 6, 6), torch.randn(1, 2, 8)
    every = torch.arange(4)[None]
    text = moe.router.expert_text(t)
    y = moe.experts(moe.expert_inputs(f), every, text)  # (1, Ne, c2, H, W): experts 0 local, 1 global, 2-3 cross
    for e, chunk in enumerate(torch.arange(16).tensor_split(4)):
        g = f.clone()
        others = torch.ones(16, dtype=torch.bool)
        others[chunk] = False
        g[:, others] = torch.randn(1, int(others.sum()), 6, 6)  # change every channel but expert e's
        y2 = moe.experts(moe.expert_inputs(g), every, text)
        torch.testing.assert_close(y2[:, e], y[:, e])
        assert all(not torch.allclose(y2[:, j], y[:, j]) for j in range(4) if j != e)
    with pytest.raises(ValueError, match="needs c >= 32"):
        SparseMoE([16, 8], 8, ne=32, k=4, fofs=1)


# ------------------------------------------------------------------------------------------- model-level behaviour


@pytest.mark.parametrize("pixel_text", [False, True])
def test_every_parameter_gets_a_gradient(pixel_text):
    """timm-style: one batch, dense routing (k = Ne) so every expert is reached."""
    model = build(ne=8, k=8, pixel_text=pixel_text)
    b = batch()
    preds = model(b["img"])
    loss, _ = model.loss(b, preds)
    # + the raw head outputs, so that box branches of levels without an assigned target also get a gradient
    (loss.sum() + preds["boxes"].mean() + preds["scores"].mean()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert not [n for n, p in trainable.items() if p.grad is None]
    zero = [n for n, p in trainable.items() if not p.grad.abs().sum() > 0]
    # Only zero-initialised paths may have an exactly-zero first gradient: TinyViT's MBConv residual branches (its
    # own init sets the last BN gamma to 0; pretrained weights differ) and the layer before SpaceBroadcast's
    # zero-initialised offset head (deformable-conv convention: start from the regular grid).
    allowed = (".vit.layers.0.blocks.", "offset.0.")
    assert [n for n in zero if not any(a in n for a in allowed)] == []


def test_text_steers_routing_and_output(model):
    img = batch(2)["img"]
    text = blocks(model, ClassText)[0]
    moe = blocks(model, SparseMoE)[0]
    out_a = detect_out(model, img)
    probs_a = moe.last_routing[0]
    original = text.embeddings.clone()
    try:
        text.embeddings.copy_(torch.randn(original.shape, generator=torch.Generator().manual_seed(7)))
        out_b = detect_out(model, img)
        probs_b = moe.last_routing[0]
    finally:
        text.embeddings.copy_(original)
    assert (probs_a - probs_b).abs().max() > 1e-3
    assert changed(out_a, out_b)


def test_every_paper_stage_has_a_block_in_the_default_model(model):
    present = {type(m) for m in model.modules()}
    assert {s for b in BLOCKS.values() if b.cls in present for s in b.stages} == set(range(1, 11))


@pytest.mark.parametrize("name", STAGED)
def test_zeroing_a_stage_changes_the_output(model, name):
    """Replace one stage block's contribution (its residual delta, or its output) by zeros: the detections change."""
    found = blocks(model, BLOCKS[name].cls)
    if not found:
        pytest.skip(f"{name} is not in dsmoe-n (dsmoe-full.yaml uses it)")
    img = batch(2)["img"]
    ref = detect_out(model, img)
    residual = isinstance(found[0], (AnisotropicDSConv, DSCBAM, SemanticDistill))  # output = input + contribution

    def zero(m, inputs, output):
        if residual:
            return inputs[0]
        return [torch.zeros_like(o) for o in output] if isinstance(output, list) else torch.zeros_like(output)

    handle = found[0].register_forward_hook(zero)
    try:
        out = detect_out(model, img)
    finally:
        handle.remove()
    assert changed(out, ref)


def test_fixed_routing_changes_the_output(model):
    """Stage 7: replacing the router's choice by a fixed one changes the detections."""
    img = batch(2)["img"]
    ref = detect_out(model, img)
    router = blocks(model, SparseMoE)[0].router
    original = router.forward

    def fixed(f, t):
        probs, idx, gates, text = original(f, t)
        idx = torch.arange(router.k).expand_as(idx)  # always the first k experts, equal weights
        return probs, idx, torch.full_like(gates, 1 / router.k), text

    router.forward = fixed
    try:
        out = detect_out(model, img)
    finally:
        del router.forward
    assert changed(out, ref)


def finite(tensors):
    return all(torch.isfinite(t).all() for t in tensors)


@pytest.mark.parametrize("kind", ["black+noise", "black+white", "noise", "huge"])
def test_no_nan_or_inf_with_extreme_inputs_under_fp16_autocast(kind):
    """Forward and backward stay finite under fp16 autocast for degenerate and out-of-range images.

    'huge' (pixels of 1e4 where 0-1 is expected) runs in fp32: after the first convolution such values exceed fp16's
    range (65504) in any detector. Not covered: a batch of identical uniform images (all black or all white). BatchNorm's batch variance is then ~0 in TinyViT's
    stem and its fp16 backward overflows there (fp32 gradients stay below 100); AMP's GradScaler skips such a step.
    """
    model = build(ne=8, k=3)
    img = {"black+noise": torch.stack([torch.zeros(3, 64, 64), torch.rand(3, 64, 64)]), "black+white": torch.stack([torch.zeros(3, 64, 64), torch.ones(3, 64, 64)]),
           "huge": torch.full((2, 3, 64, 64), 1e4), "noise": torch.randn(2, 3, 64, 64) * 100}[kind]
    b = batch(2, 64)
    b["img"] = img
    with torch.autocast("cpu", dtype=torch.float16, enabled=kind != "huge"):
        loss, items = model.loss(b)
    assert finite([loss, *items.values()])
    loss.sum().backward()
    assert finite([p.grad for p in model.parameters() if p.grad is not None])


def test_hyperbolic_align_is_finite_at_the_boundary():
    torch.manual_seed(0)
    block = HyperbolicAlign([8, 16], n=6, nc=3)
    f = torch.randn(2, 8, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 16) * 1e4  # anchors pushed to the ball's boundary
    out = block([f * 1e4, t])  # features far outside tanh's linear range
    out.sum().backward()
    assert finite([out, f.grad]) and out.shape == (2, 6 + 3, 4, 4)


def test_manifold_switch_is_the_euclidean_ablation():
    torch.manual_seed(0)
    hyp = HyperbolicAlign([8, 16], n=6, nc=3)
    euc = HyperbolicAlign([8, 16], n=6, nc=3, manifold="euclidean")
    euc.load_state_dict(hyp.state_dict())
    x = [torch.randn(2, 8, 4, 4), torch.randn(2, 3, 16)]
    assert (hyp(x) - euc(x)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="manifold"):
        HyperbolicAlign([8, 16], manifold="lorentz")


def test_encoder_and_text_are_model_state(model):
    sd = model.state_dict()
    text = blocks(model, ClassText)[0]
    assert any(k.endswith("embeddings") and v.shape == (4, 1536) for k, v in sd.items())
    torch.testing.assert_close(text.embeddings.norm(dim=1), torch.ones(4))  # placeholder unit vectors
    assert isinstance(model.model[0], HybridEncoder) and isinstance(model.model[0].sam, MobileSAMEncoder)
    assert math.isclose(blocks(model, SparseMoE)[0].router.log_tau.exp().item(), 0.1, rel_tol=1e-6)  # eq. 20 init


def test_routing_depends_on_the_image():
    """Different images pick different experts (a router that sends every image to the same k collapses)."""
    torch.manual_seed(0)
    router = SparseMoE([32, 16], 32, ne=32, k=5).router.train()
    g = torch.Generator().manual_seed(3)
    f = torch.rand(8, 32, 6, 6, generator=g) + torch.rand(8, 32, 1, 1, generator=g)  # per-image content
    t = torch.randn(1, 4, 16, generator=g).expand(8, -1, -1)  # the same class texts for every image
    probs, idx, gates, text = router(f, t)
    assert len({tuple(sorted(row.tolist())) for row in idx}) > 1
    keys = torch.nn.functional.normalize(router.psi(text[0]), dim=-1)
    assert (keys @ keys.T - torch.eye(32)).abs().max() < 0.95  # expert keys are not all alike


def test_router_trains_on_a_batch_of_one():
    """The last batch of an epoch may hold one image: batch statistics do not exist, running ones are used."""
    moe = SparseMoE([16, 8], 16, ne=4, k=2).train()
    out = moe([torch.randn(1, 16, 5, 5), torch.randn(1, 2, 8)])
    assert out.shape == (1, 16, 5, 5) and torch.isfinite(out).all()
