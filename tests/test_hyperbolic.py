"""Stage 5's hand-written Poincaré-ball operations against geoopt (curvature -1) in float64, clamps included."""

import pytest
import torch

geoopt = pytest.importorskip("geoopt")

from ultralytics_dsmoe.nn import hyperbolic as H  # noqa: E402

BALL = geoopt.PoincareBall(c=1.0)


def points(n=64, d=8, scale=1.0, seed=0):
    """Points as HyperbolicAlign makes them: clipped Euclidean vectors (|v| <= 2.3) lifted by Exp_0."""
    g = torch.Generator().manual_seed(seed)
    return H.expmap0(H.clip_norm(torch.randn(n, d, generator=g, dtype=torch.float64) * scale))


# From near the origin to the clip radius (|x| = tanh(2.3) = 0.98), the whole range the model uses. Beyond it the
# two libraries clamp differently within 1e-5 of the boundary (see the clamp test below).
@pytest.mark.parametrize("scale", [0.01, 0.3, 0.8, 5.0])
def test_operations_match_geoopt(scale):
    x, y = points(scale=scale, seed=0), points(scale=scale, seed=1)
    v = H.clip_norm(torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * scale)
    torch.testing.assert_close(H.expmap0(v), BALL.expmap0(v))
    torch.testing.assert_close(H.logmap0(x), BALL.logmap0(x))
    torch.testing.assert_close(H.mobius_add(x, y), BALL.mobius_add(x, y))
    torch.testing.assert_close(H.logmap(x, y), BALL.logmap(x, y))
    torch.testing.assert_close(H.dist(x, y), BALL.dist(x, y))


def test_distance_equals_the_arccosh_form_of_eq_12():
    x, y = points(scale=1.0, seed=3), points(scale=1.0, seed=4)
    x2, y2 = (x * x).sum(-1), (y * y).sum(-1)
    arccosh = torch.acosh(1 + 2 * ((x - y) ** 2).sum(-1) / ((1 - x2) * (1 - y2)))
    torch.testing.assert_close(H.dist(x, y), arccosh)


def test_distances_saturate_instead_of_overflowing_at_the_boundary():
    x = torch.tensor([[1 - 1e-9, 0.0]], dtype=torch.float64)
    y = torch.tensor([[-(1 - 1e-9), 0.0]], dtype=torch.float64)
    d = H.dist(x, y)
    assert torch.isfinite(d) and d.item() == pytest.approx(2 * H.artanh(torch.tensor(H.MAX_NORM, dtype=torch.float64)).item())


def test_clamps_keep_points_inside_and_gradients_finite():
    v = torch.tensor([[0.0, 0.0], [1e-12, 0.0], [30.0, 40.0], [1e6, -1e6]], dtype=torch.float32, requires_grad=True)
    x = H.expmap0(v)
    assert (x.norm(dim=-1) < 1).all()  # tanh(50) rounds to 1 in fp32: projected back inside
    anchor = torch.tensor([0.3, -0.2])
    out = H.dist(anchor, x).sum() + H.logmap(anchor, x).sum() + H.logmap0(x).sum()
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(v.grad).all()
    torch.testing.assert_close(H.artanh(torch.tensor([0.5])), torch.atanh(torch.tensor([0.5])))


def test_log_of_exp_is_identity_up_to_the_clip():
    v = torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    v = v * (1.0 / v.norm(dim=-1, keepdim=True))  # |v| = 1: well inside the clip radius
    torch.testing.assert_close(H.logmap0(H.expmap0(H.clip_norm(v))), v)
    long = v * 10
    assert torch.allclose(H.clip_norm(long).norm(dim=-1), torch.full((32,), H.CLIP_RADIUS, dtype=torch.float64))
