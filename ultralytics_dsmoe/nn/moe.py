"""Stages 7-8: text-visual co-attention router and the sparse mixture of heterogeneous experts (paper eqs. 20-24)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ground import grounding_loss
from .hyperbolic import class_assignment
from .transient import AuxLossBlock, TransientState

__all__ = ("ExpertRouter", "SparseMoE", "biased_routers", "merge_regions", "split_regions", "switch_loss",
           "update_selection_biases")

# Lowest router temperature. Routing logits are cosines in [-1, 1]: at tau = 0.01 their spread is 200, the softmax is
# already one-hot in fp32 (exp(-200) underflows) and the router's gradient vanishes; the floor keeps it alive.
TAU_MIN = 0.01
BALANCE = ("switch", "bias")  # load-balancing schemes, see SparseMoE


def mlp(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """Two hidden layers, as the paper's routing projectors (sec. 3.3: '2 hidden layers, 128 dimensions')."""
    return nn.Sequential(nn.Linear(c_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, c_out))


class ExpertRouter(TransientState):
    """Stage 7 (eq. 20): ``w_i = softmax_i(<phi(F_b), psi(T_i)> / tau)`` over Ne experts, then top-k.

        phi(F_b)  = MLP(BN(GAP(F_b) (+) GMP(F_b)))     (B, d_g); GAP(W F) = W GAP(F), so pooling comes first
        T_i       = q_i + softmax(q_i T_hat^T / sqrt(d)) T_hat      expert i's text: learned query attending over
                                                                    the nc class texts, (B, Ne, d)
        psi(T_i)  = MLP(T_i)                           (B, Ne, d_g)
        w         = softmax(<phi, psi_i>_cos / tau)    tau learnable, initialised at 0.1 (eq. 20), floored at TAU_MIN
        top-k     = the k largest w + b per sample; gates: their w, renormalised to sum to 1
        b         = per-expert selection bias (``balance='bias'``, below); 0 otherwise

    Reading: eq. 20 gives expert i 'its' class text T_i, but there are Ne = 32 experts and only nc (4-6) classes.
    Each expert owns a learned query that attends over the class texts, so every expert key is a function of the
    prompts for any nc (changing the prompts changes routing). Similarities are cosine: with tau = 0.1, raw dot
    products of unnormalised 128-d vectors would saturate the softmax at initialisation.

    The paper gives tau twice: "initialized at 0.1" beside eq. 20, and "tau = 0.07 (calibrated via validation set
    analysis)" in its implementation details. The equation's initial value is used; tau is learned from there.

    Two additions make routing depend on the image. (1) The descriptor is GAP concatenated with global max pooling:
    GAP is dominated by the background every image shares, while GMP keeps the strongest local response (a small
    defect); ``BN`` (no affine; batch statistics in training, running statistics otherwise) standardises it across
    images. (2) Expert queries start at the scale of the LayerNorm'd texts, so expert keys differ from each other and
    not only through the class mixture (before: pairwise key cosine 0.997). Measured on the synthetic set (dsmoe-n,
    10 epochs, 128 px, random-init encoder, k = 5): the 32 validation images used 5 of 32 experts before these
    changes and 8 after, with the balance loss at 0.01 (5 without it). Such images share one texture, so per-image
    routing varies little; on augmented training batches (6 epochs) 17 experts were used with the balance loss
    and 11 without.

    Class affinity (``affinity=True``; off by default until measured): the routing score also asks which classes the
    routed unit's pixels look like, and gives it to the experts whose text is made of those classes:

        a_c(x)    = softmax_c(<W_p F_b(x), W_a T_hat_c>_cos / tau_a)     per pixel, (B, nc, H, W)
        abar_c    = mean_x a_c(x)                                      per routed unit, (B, nc)
        pi_i      = softmax(q_i T_hat^T / sqrt(d))                     expert i's class mixture (the same attention
                                                                       that builds T_i), (B, Ne, nc)
        cos_i    += beta * <abar, pi_i>                                beta learnable, initialised at 1

    With a background anchor (``affinity=2``), the assignment has nc + 1 choices, the last a learned background vector
    b, and a unit's affinity is whether it holds class c anywhere:

        a_c(x)    = softmax over [W_a T_hat_1 .. W_a T_hat_nc, b] of the same cosines / tau_a     (B, nc + 1, H, W)
        abar_c    = max_x a_c(x),  c < nc                              (B, nc); the grid's zero padding excluded

    Without it, every pixel must pick a defect class, so the background, most of any region, picks one too: measured on
    the grounded upgrade (routing per 4 x 4 region, aluminum test split), background regions took scratch or crease,
    and the mean over a region holding a pinhole said "scratch" 22 times in 27 (the argmax of abar named a class the
    region holds for 52% of defect regions; the max over pixels, 75%).

    Without it, text reaches the routing score only through the expert keys psi(T_i), the same for every image of a
    dataset; with it, the text is compared with each pixel, so the prompts move different images' routing
    differently (the issue's "text that meets the image"). With ``ground_gain`` > 0, a_c is trained on the boxes
    (``nn.ground``, through ``SparseMoE``): abar then says which classes the unit holds, so the experts whose class
    mixture matches are the ones it is routed to.

    Loss-free balancing (``balance='bias'``, DeepSeek-V3): the bias b only changes which experts are selected, never the
    gates. Training forwards count each expert's routing slots (``load``); after each training batch ``update_bias``
    moves b by ``bias_rate * sign(mean load - load_e)`` outside autograd, with the loads summed over DDP ranks, so
    overloaded experts become less likely to be chosen without a loss term the router could satisfy some other way.
    The Ultralytics trainer calls it after every batch (``patches.trainer``), so with gradient accumulation (``nbs /
    batch`` batches per optimiser step) b moves that many times per optimiser step; a custom loop calls
    ``update_selection_biases(model)`` after each batch. ``cos`` keeps the last forward's cosines (B, Ne) for
    the balance terms.

    Args:
        c: visual channels of F_b.
        d: text width.
        ne: number of experts.
        k: experts kept per sample.
        dg: routing width.
        tau: initial temperature; also the fixed temperature of the balance term (``tau0``).
        balance: 'switch' (Switch load-balancing loss) or 'bias' (loss-free bias balancing).
        bias_rate: step of the selection bias per training batch (DeepSeek-V3's gamma, 1e-3 per step, on scores in
            [0, 1]; the Ultralytics trainer's batches are smaller than its optimiser steps when it accumulates).
        units: routed units per image in f (SparseMoE's regions, s^2; 1 = per image).
        affinity: add the per-pixel class-affinity term to the routing score: 0 = off, 1 = on, 2 = on with a
            background anchor (above).
    """

    TRANSIENT = ("cos", "load", "pixel_logits")
    balance, tau0, bias_rate, units = "switch", 0.1, 1e-3, 1  # class defaults: routers pickled by 0.1.0 lack them
    affinity = background = False  # class defaults: routers pickled before the options existed

    def __init__(self, c: int, d: int, ne: int = 32, k: int = 5, dg: int = 128, tau: float = 0.1,
                 balance: str = "switch", bias_rate: float = 1e-3, units: int = 1, affinity: int = 0):
        super().__init__()
        if not 1 <= k <= ne:
            raise ValueError(f"ExpertRouter: top-k must be in [1, {ne}], got {k}")
        if balance not in BALANCE:
            raise ValueError(f"ExpertRouter: balance must be one of {BALANCE}, got {balance!r}")
        self.ne, self.k, self.balance, self.tau0, self.bias_rate = ne, k, balance, float(tau), float(bias_rate)
        self.units = int(units)
        self.register_buffer("select_bias", torch.zeros(ne))  # b: stays 0 unless balance == 'bias'
        self.cos = self.load = None
        self.norm = nn.BatchNorm1d(2 * c, affine=False)
        self.phi = mlp(2 * c, 128, dg)
        self.psi = mlp(d, 128, dg)
        self.queries = nn.Parameter(torch.randn(ne, d))  # the scale of T_hat (LayerNorm: unit per element)
        self.log_tau = nn.Parameter(torch.tensor(float(tau)).log())
        if affinity not in (0, 1, 2):
            raise ValueError(f"ExpertRouter: affinity is 0 (off), 1 (on) or 2 (on, with a background anchor), got "
                             f"{affinity!r}")
        self.affinity, self.background = bool(affinity), affinity == 2
        if self.background:
            self.background_anchor = nn.Parameter(torch.randn(dg))  # b, compared with W_p F_b(x) like W_a T_hat_c
        if self.affinity:
            self.pixel = nn.Conv2d(c, dg, 1)  # W_p
            self.anchor = nn.Linear(d, dg)  # W_a
            self.log_tau_a = nn.Parameter(torch.tensor(0.1).log())
            self.beta = nn.Parameter(torch.tensor(1.0))

    def class_mixture(self, t: torch.Tensor) -> torch.Tensor:
        """(B, nc, d) class texts -> (B, Ne, nc): each expert query's attention over the classes."""
        d = self.psi[0].in_features  # a Python int, not a traced size: no tensor-to-float conversion when exporting
        return (torch.einsum("ed,bcd->bec", self.queries.to(t.dtype), t) / math.sqrt(d)).softmax(-1)

    def expert_text(self, t: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
        """(B, nc, d) class texts -> (B, Ne, d) expert texts T_i (``mix``: their class mixture, if already computed)."""
        return self.queries.to(t.dtype) + (self.class_mixture(t) if mix is None else mix) @ t

    def class_affinity(self, f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """F_b (U, C, H, W), T_hat (U, nc, d) -> (U, nc): the mean over the unit's pixels of their class assignment, or
        with the background anchor the max over its pixels of each class's share."""
        p = F.normalize(self.pixel(f).float(), dim=1)  # (U, dg, H, W)
        a = F.normalize(self.anchor(t).float(), dim=-1)  # (U, nc, dg)
        cos = torch.einsum("ughw,ucg->uchw", p, a)  # (U, nc, H, W)
        if self.background:  # + the background's column: (U, nc + 1, H, W)
            b = F.normalize(self.background_anchor.float(), dim=0)
            cos = torch.cat([cos, torch.einsum("ughw,g->uhw", p, b).unsqueeze(1)], 1)
        logits = cos / self.log_tau_a.exp().clamp_min(TAU_MIN)
        if not torch.jit.is_tracing():
            self.pixel_logits = logits  # for the grounding loss
        probs = logits.softmax(1)
        if not self.background:
            return probs.mean((2, 3))
        real = (f.detach().abs().amax(1, keepdim=True) > 0).to(probs.dtype)  # (U, 1, H, W): 0 on the grid's padding
        return (probs[:, :-1] * real).amax((2, 3))

    def descriptor(self, f: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 2C) average- and max-pooled features, standardised across images."""
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        if self.training and pooled.shape[0] > 1:
            return self.norm(pooled)  # batch statistics, and the running ones updated
        # Running statistics (a lone training sample has no batch statistics), written out: exported, BatchNorm would
        # need a static channel count, which the region reshapes do not keep.
        n = self.norm
        return (pooled - n.running_mean) / (n.running_var + n.eps).sqrt()

    def forward(self, f: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """F_b (B, C, H, W), T_hat (B / r, nc, d) -> probs (B, Ne), idx (B, k), gates (B, k), expert texts (B, Ne, d).
        f holds r = ``units`` routed units per image (regions, image-major; 1 = the image itself): the expert keys,
        which depend on the text alone, are computed once per image."""
        mix = self.class_mixture(t)  # (B, Ne, nc)
        text = self.expert_text(t, mix)
        psi = repeat_units(F.normalize(self.psi(text).float(), dim=-1), self.units)  # (B, Ne, d_g)
        text = repeat_units(text, self.units)
        phi = F.normalize(self.phi(self.descriptor(f)).float(), dim=-1)  # (B, d_g)
        cos = torch.einsum("bg,beg->be", phi, psi)  # (B, Ne) in [-1, 1]
        if self.affinity:  # + beta <abar, pi_i>: which classes the unit looks like, matched to each expert's classes
            abar = self.class_affinity(f, repeat_units(t, self.units))  # (B, nc)
            cos = cos + self.beta * torch.einsum("bc,bec->be", abar, repeat_units(mix, self.units).float())
        probs = (cos / self.log_tau.exp().clamp_min(TAU_MIN)).softmax(-1)  # eq. 20
        idx = self.select(probs)
        top = probs.gather(1, idx)
        if not torch.jit.is_tracing():
            self.cos = cos
            if self.training and self.balance == "bias":
                self.count_load(idx)
        return probs, idx, top / top.sum(-1, keepdim=True), text

    def select(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, Ne) probabilities -> (B, k) chosen experts: the k largest w + b (the bias only selects)."""
        return (probs + self.select_bias).topk(self.k, dim=-1).indices

    @torch.no_grad()
    def count_load(self, idx: torch.Tensor) -> None:
        """Add the routing slots of (B, k) choices to ``load`` (Ne,), until the next ``update_bias``."""
        load = F.one_hot(idx, self.ne).sum((0, 1)).float()
        self.load = load if self.load is None else self.load + load

    @torch.no_grad()
    def update_bias(self) -> None:
        """b_e += bias_rate * sign(mean load - load_e) with the loads counted since the last call, summed over ranks.

        Under DDP every rank must call it at the same step (it is a collective), as the trainer's batch callback does."""
        load = self.select_bias.new_zeros(self.ne) if self.load is None else self.load
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)  # every rank applies the same update: biases stay identical
        if load.sum() > 0:
            self.select_bias += self.bias_rate * torch.sign(load.mean() - load)
        self.load = None

    def __setstate__(self, state):
        super().__setstate__(state)
        self._buffers.setdefault("select_bias", torch.zeros(self.ne))  # routers pickled by plugin 0.1.0


class SparseMoE(AuxLossBlock):
    """Stage 8 (eqs. 21-24): per image, or per region of the map, only the k routed experts run.

        E_1 (local, eq. 22)  = W_1 [sum_{k=3,5} DW_kx1(F_b^a) (+) sum_{k=3,5} DW_1xk(F_b^b)]
        E_2 (global, eq. 23) = W_2 [AvgPool_17(F_b^a) (+) AvgPool_33(F_b^b)]
        E_j (cross, eq. 24)  = LayerNorm_j(W_j F_b + W_t^(j) Expand(T_j)),   j = 3..Ne
        F_MoE                = sum_{i in top-k} g_i E_i                       eq. 21, (B, c2, H, W)

    Expand(T_j), two readings, chosen by the inputs:
    - [F_b, T_hat]: expert j's text T_j (``ExpertRouter``) at every pixel. T_hat does not depend on the image, so
      ``W_t^(j) T_j`` is one learned vector per expert, what ``bias`` already holds: a bias, not guidance.
    - [F_b, T_hat, G] (pixel text): ``W_t^(j) sum_c a_c(p) T_hat_c`` with ``a = softmax_c(-d_H / tau)`` from Stage 5's
      distance maps in G (tau learned, initialised at 1), as Stage 6 forms its text context: the expert reads the
      text of the classes each pixel is near. Computed as ``sum_c a_c(p) (W_t^(j) T_hat_c)``: nc products per chosen
      expert, not H * W.

    How sparsity is real: every expert is "cheap spatial pre-op + 1x1 projection W_e". The pre-ops (depthwise
    anisotropic kernels, box means, identity) have no channel mixing and are computed once per sample for all three
    expert kinds; the projections (the cost) are stored stacked as one (Ne, c2, c) bank. For each sample the k chosen
    projections are gathered (``SparseMoE.chosen``) and applied by one batched matmul, after a one-hot matmul has
    picked each chosen expert's kind of input (ONNX Runtime runs MatMul faster than the same Einsum), so compute grows
    with k and not with Ne, there is no Python control flow on routing, and the graph exports.

    Readings: eq. 22-23 concatenate two branches; here channel halves F_b^a, F_b^b go through the two branches so
    the concatenation has c channels and every expert's projection has the same shape (the per-k pointwise convs of
    eq. 22 are merged into W_1, exact by linearity). The 16x16 / 32x32 pooling of eq. 23 is a stride-1 box mean over
    17 / 33 cells (odd, centred, borders excluded), computed separably. 'batch statistics computed per spatial
    position' (eq. 24) is a LayerNorm over channels at each pixel, with per-expert affine parameters.

    Load balancing (the paper has none; without it sparse routers collapse onto a few experts):
    - ``balance='switch'``: auxiliary loss ``moe_loss`` (gain: model-YAML key ``moe_balance``), the Switch-Transformer
      balance ``Ne * sum_e f_e P_e`` (f_e: share of the B*k routing slots sent to expert e; P_e: mean router
      probability). P is computed at the router's fixed initial temperature ``tau0``, not its learned tau: with the
      learned one, the router could satisfy the loss (value 1) by raising tau until P is uniform while routing stays
      collapsed. At a fixed temperature the term does not depend on tau at all.
    - ``balance='bias'``: loss-free bias balancing (``ExpertRouter``); ``moe_loss`` is still reported, detached.
    - optional router z-loss ``moe_zloss = mean(logsumexp(logits)^2)`` (ST-MoE), gain ``moe_zloss`` (default 0: off).
    ``last_routing`` holds the last forward's (probs, idx), detached, for routing reports.

    Expert diversity (MoECLIP), both off by default until measured:
    - ``fofs=1`` (Frozen Orthogonal Feature Separation): expert e sees only its own contiguous 1/Ne of the input
      channels. MoECLIP draws a frozen orthonormal (r x chunk) down-projection per expert; at full rank r = chunk,
      as here, that is a fixed rotation of the chunk that the expert's own projection absorbs, so the frozen part is
      a channel mask on the stacked bank (still one gather per routed unit, exported alike).
    - ``moe_etf`` (model-YAML gain, 0 = off): the simplex equiangular-tight-frame loss on the chosen experts' outputs:
      at every pixel the k outputs, L2-normalised over channels, should have cosine 1 with themselves and
      -1/(Ne - 1) with each other (the most spread Ne unit vectors can be); the term is the mean squared error of
      their Gram matrix to that target.

    Routing granularity (``regions``): 1 routes each image as a whole (eqs. 20-21). s > 1 cuts the map into an
    s x s grid of regions (the most even split: regions of ceil(H/s) x ceil(W/s) cells, the map zero-padded to
    whole regions and cropped after) and routes each region on its own descriptor, as MoECLIP routes patches: a
    scratch and the background beside it can go to different experts. The expert inputs are computed on the whole
    map first (the global experts' box means see across region borders); each region then runs the same sparse
    path as an image does, so compute still grows with k and not Ne. A grid of fixed size, rather than regions of
    fixed size, keeps the gathered expert weights (B s^2 k c2 c) independent of the resolution. Routing and the
    balance terms count regions (B s^2 routing decisions per batch).

    Args:
        c1: [channels c of F_b, text width d], or with G's channels (n + nc) appended for the pixel text.
        c2: output channels.
        ne: number of experts (2 task + ne - 2 cross-modal).
        k: experts per sample (paper: floor(log2 Ne) = 5).
        balance: load-balancing scheme, 'switch' or 'bias' (see above).
        regions: routing grid side s: 1 = per image (the paper), s > 1 = per region of an s x s grid.
        affinity: the router's per-pixel class-affinity term (``ExpertRouter``); 0 = off (default), 1 = on, 2 = on with
            a background anchor. On, the block also has the term ``ground_loss`` (gain ``ground_gain``, 0 = off): the
            affinity grounded on the boxes (with the anchor, the cells in no box are the background's).
        fofs: 1 = each expert sees only its own 1/Ne of the input channels (above); 0 = off (default).
    """

    # Switch Transformer's balance coefficient (Fedus et al. 2021); ST-MoE's z-loss coefficient is 1e-3 (off by default)
    AUX_LOSSES = {"moe_loss": ("moe_balance", 0.01), "moe_zloss": ("moe_zloss", 0.0), "moe_etf": ("moe_etf", 0.0)}
    TRANSIENT = ("saved", "last_routing", "ground_logits")
    # class defaults: blocks pickled before routing granularity existed route per image (and never need c_in, c_out)
    regions, c_in, c_out, fofs = 1, 0, 0, False

    def __init__(self, c1: list[int], c2: int, ne: int = 32, k: int = 5, balance: str = "switch", regions: int = 1,
                 affinity: int = 0, fofs: int = 0):
        super().__init__()
        c, d = c1[:2]
        if ne < 3:
            raise ValueError(f"SparseMoE needs the 2 task experts and at least one cross-modal expert, got ne={ne}")
        if int(regions) != regions or regions < 1:
            raise ValueError(f"SparseMoE regions is the side of the routing grid, an integer >= 1, got {regions!r}")
        self.ne, self.k, self.half, self.regions = ne, k, c // 2, int(regions)
        self.c_in, self.c_out = c, c2  # Python ints: the region reshapes keep channels static when exported
        self.router = ExpertRouter(c, d, ne, k, balance=balance, units=self.regions**2, affinity=int(affinity))
        if affinity:  # a per-pixel class assignment to ground on the boxes
            self.AUX_LOSSES = {**SparseMoE.AUX_LOSSES, "ground_loss": ("ground_gain", 0.0)}
        a, b = self.half, c - self.half
        self.local_h = nn.ModuleList(nn.Conv2d(a, a, (s, 1), padding=(s // 2, 0), groups=a, bias=False) for s in (3, 5))
        self.local_v = nn.ModuleList(nn.Conv2d(b, b, (1, s), padding=(0, s // 2), groups=b, bias=False) for s in (3, 5))
        self.weight = nn.Parameter(torch.randn(ne, c2, c) / math.sqrt(c))  # W_e: the stacked expert projections
        self.bias = nn.Parameter(torch.zeros(ne, c2))
        self.text_weight = nn.Parameter(torch.randn(ne, c2, d) / math.sqrt(d))  # W_t^(j); used by cross experts only
        if len(c1) == 3:  # pixel text: the temperature of the pixels' class assignment
            self.text_log_tau = nn.Parameter(torch.zeros(()))
        self.ln_weight = nn.Parameter(torch.ones(ne, c2))
        self.ln_bias = nn.Parameter(torch.zeros(ne, c2))
        kind = torch.tensor([0, 1] + [2] * (ne - 2))  # 0 local, 1 global, 2 cross-modal
        self.register_buffer("kind", kind, persistent=False)
        self.fofs = bool(fofs)
        if self.fofs:
            if c < ne:
                raise ValueError(f"SparseMoE fofs gives each of {ne} experts its own channels: needs c >= {ne}, got {c}")
            mask = torch.zeros(ne, 1, c)
            for e, chunk in enumerate(torch.arange(c).tensor_split(ne)):
                mask[e, 0, chunk] = 1.0
            self.register_buffer("fofs_mask", mask, persistent=False)  # (Ne, 1, c): expert e's channels
        self.saved = None
        self.last_routing = None  # (probs (B, Ne), idx (B, k)) of the last forward, for routing reports

    @staticmethod
    def box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
        """Stride-1 mean over a size x size window, borders excluded (exact as two 1-D means)."""
        x = F.avg_pool2d(x, (size, 1), 1, (size // 2, 0), count_include_pad=False)
        return F.avg_pool2d(x, (1, size), 1, (0, size // 2), count_include_pad=False)

    def expert_inputs(self, f: torch.Tensor) -> torch.Tensor:
        """(B, c, H, W) -> (B, 3, c, H, W): the inputs of the local, global and cross-modal projections."""
        fa, fb = f[:, : self.half], f[:, self.half :]
        local = torch.cat([sum(m(fa) for m in self.local_h), sum(m(fb) for m in self.local_v)], 1)
        pooled = torch.cat([self.box_mean(fa, 17), self.box_mean(fb, 33)], 1)
        return torch.stack([local, pooled, f], 1)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        """[F_b (B, c, H, W), T_hat (B, nc, d)[, G (B, n + nc, H, W)]] -> F_MoE (B, c2, H, W).

        Below, B counts routed units: images, or B * s^2 regions of (H, W) = (ceil(H/s), ceil(W/s)) cells."""
        f, t, *geo = x
        h, w = f.shape[-2:]
        inputs, f = self.routed_units(f)  # (B, 3, c, H, W), (B, c, H, W)
        probs, idx, gates, text = self.router(f, t)
        y = self.experts(inputs, idx, *self.unit_text(t, geo) if geo else (text,))  # (B, k, c2, H, W)
        out = (gates.to(f.dtype)[:, None] @ y.flatten(2)).view(y.shape[0], *y.shape[2:])  # (B, c2, H, W): sum_i g_i E_i
        self.remember(self.router.cos, idx, y)
        if not torch.jit.is_tracing():
            self.last_routing = (probs.detach(), idx.detach())
            if self.router.affinity:  # the units' per-pixel class logits, back on the (B, nc, H, W) map
                logits = self.router.pixel_logits
                self.ground_logits = merge_regions(logits, self.regions, logits.shape[1], h, w)
        return merge_regions(out, self.regions, self.c_out, h, w)

    def routed_units(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F_b (B, c, H, W) -> the expert inputs (U, 3, c, h, w) and F_b (U, c, h, w) of the U = B s^2 routed units.
        The expert inputs are computed on the whole map first: the global experts' box means cross region borders."""
        s, c = self.regions, self.c_in
        units = split_regions(self.expert_inputs(f).flatten(1, 2), s, 3 * c)  # (U, 3c, h, w)
        # view, not unflatten: the tracer keeps a view's sizes symbolic, an unflatten's become constants in ONNX
        inputs = units.view(units.shape[0], 3, -1, *units.shape[2:])  # c from the map: 0.1.0 blocks have c_in = 0
        return inputs, split_regions(f, s, c)

    def unit_text(self, t: torch.Tensor, geo: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """For the pixel text: T_hat (B, nc, d) and [G (B, n + nc, H, W)] -> each routed unit's class texts (U, nc, d)
        and its pixels' class assignment (U, nc, h, w)."""
        a = class_assignment(geo[0], t.shape[1], self.text_log_tau)
        return repeat_units(t, self.regions**2), split_regions(a, self.regions, a.shape[1])

    def experts(self, inputs: torch.Tensor, idx: torch.Tensor, text: torch.Tensor,
                assign: torch.Tensor | None = None) -> torch.Tensor:
        """Expert inputs (B, 3, c, H, W), chosen experts idx (B, k) and the text: expert texts T_j (B, Ne, d), or with
        the pixel text the class texts T_hat (B, nc, d) and their assignment ``assign`` (B, nc, H, W) ->
        E_i (B, k, c2, H, W): the outputs of the chosen experts only (eqs. 22-24), before gating."""
        dtype = inputs.dtype
        pick = self.chosen(idx)
        kind = pick(self.kind)  # (B, k)
        b, _, c, h, w = inputs.shape
        xs = (F.one_hot(kind, 3).to(dtype) @ inputs.flatten(2)).view(b, -1, c, h * w)  # (B, k, c, H*W)
        weight = pick(self.weight) * pick(self.fofs_mask) if self.fofs else pick(self.weight)  # (B, k, c2, c)
        y = (weight.to(dtype) @ xs).view(b, -1, weight.shape[2], h, w)  # (B, k, c2, H, W): only the k chosen W_e run
        cross = (kind == 2).to(dtype)[..., None]  # (B, k, 1)
        w_t = pick(self.text_weight)  # (B, k, c2, d)
        if assign is None:  # W_t^(j) T_j: one vector per expert, the same at every pixel
            text_k = torch.gather(text, 1, idx.unsqueeze(-1).expand(-1, -1, text.shape[-1]))  # (B, k, d)
            shift = pick(self.bias) + cross * torch.einsum("bkod,bkd->bko", w_t, text_k.to(w_t.dtype))
            y = y + shift.to(dtype)[..., None, None]
        else:  # W_t^(j) sum_c a_c(p) T_hat_c = sum_c a_c(p) (W_t^(j) T_hat_c)
            per_class = w_t @ text.transpose(1, 2).unsqueeze(1).to(w_t.dtype)  # (B, k, c2, nc)
            pixel = (per_class @ assign.flatten(2).unsqueeze(1).to(w_t.dtype)).view(y.shape)  # (B, k, c2, H, W)
            y = y + pick(self.bias).to(dtype)[..., None, None] + cross[..., None, None] * pixel.to(dtype)
        centred = y - y.mean(2, keepdim=True)
        normed = centred / (centred.square().mean(2, keepdim=True) + 1e-5).sqrt()
        normed = normed * pick(self.ln_weight).to(dtype)[..., None, None] + pick(self.ln_bias).to(dtype)[..., None, None]
        cross = cross[..., None, None]
        return cross * normed + (1 - cross) * y  # LayerNorm for cross-modal experts only (eq. 24)

    @torch.no_grad()
    def expert_similarity(self, f: torch.Tensor, t: torch.Tensor, *geo: torch.Tensor) -> torch.Tensor:
        """Mean pairwise cosine similarity of all Ne experts' outputs on the same input (B routed units, each
        expert's (c2, H, W) output flattened): 1 = interchangeable experts. Runs every expert: for reports only."""
        inputs, f = self.routed_units(f)
        text = self.unit_text(t, geo) if geo else (repeat_units(self.router.expert_text(t), self.regions**2),)
        every = torch.arange(self.ne, device=f.device).expand(len(f), -1)
        y = F.normalize(self.experts(inputs, every, *text).flatten(2).float(), dim=-1)  # (B, Ne, c2 H W)
        sim = y @ y.transpose(1, 2)  # (B, Ne, Ne)
        off = ~torch.eye(self.ne, dtype=torch.bool, device=f.device)
        return sim[:, off].mean()

    def aux_losses(self, terms=None, batch=None) -> dict[str, torch.Tensor]:
        cos, idx, y = self.saved  # (B, Ne) cosines, (B, k) chosen experts, (B, k, c2, H, W) their outputs
        r = self.router

        def balance():
            value = self.balance_loss((cos.float() / r.tau0).softmax(-1), idx)  # fixed temperature: see above
            return value.detach() if r.balance == "bias" else value

        def zloss():
            return torch.logsumexp(cos.float() / r.log_tau.exp().clamp_min(TAU_MIN), -1).pow(2).mean()

        compute = {"moe_loss": balance, "moe_zloss": zloss, "moe_etf": lambda: self.etf_loss(y)}
        if "ground_loss" in self.AUX_LOSSES and batch is not None:  # with the class affinity, on the batch's boxes
            compute["ground_loss"] = lambda: grounding_loss(self.ground_logits, batch, r.background)
        return {name: fn() for name, fn in compute.items() if terms is None or name in terms}

    def etf_loss(self, y: torch.Tensor) -> torch.Tensor:
        """Simplex-ETF loss of the chosen experts' outputs y (B, k, c2, H, W): per pixel, the MSE of the Gram matrix of
        the k channel-normalised outputs to 1 on the diagonal and -1/(Ne - 1) off it."""
        u = F.normalize(y.float(), dim=2)
        gram = torch.einsum("bkohw,bjohw->bhwkj", u, u)  # (B, H, W, k, k)
        eye = torch.eye(self.k, device=y.device)
        target = eye + (1 - eye) * (-1.0 / (self.ne - 1))
        return (gram - target).pow(2).mean()

    @staticmethod
    def chosen(idx: torch.Tensor):
        """(B, k) expert indices -> a function taking an (Ne, ...) bank to the (B, k, ...) rows of the chosen experts.

        ``index_select`` rather than ``bank[idx]``: the same Gather when exported, but its backward is a dense
        ``index_add`` where advanced indexing's is an accumulating ``index_put`` (measured here: 11 of SparseMoE's
        46 ms per training step at dsmoe-n, 160 px, batch 16)."""
        flat = idx.reshape(-1)
        return lambda bank: bank.index_select(0, flat).view(*idx.shape, *bank.shape[1:])

    def balance_loss(self, probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Switch load balance of one batch: probs (B, Ne), idx (B, k) -> scalar."""
        share = F.one_hot(idx, self.ne).float().sum(1).mean(0) / self.k  # f_e
        return switch_loss(share, probs.float().mean(0))


def repeat_units(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, ...) -> (B r, ...): each image's row repeated for its r routed units (``repeat_interleave`` as an expand,
    which exports without a repeats input)."""
    return x.unsqueeze(1).expand(-1, r, *[-1] * (x.dim() - 1)).flatten(0, 1)


def split_regions(x: torch.Tensor, s: int, c: int) -> torch.Tensor:
    """(B, c, H, W) -> (B s^2, c, ceil(H/s), ceil(W/s)): an s x s grid of regions, row-major per image, the map
    zero-padded at the bottom and right to whole regions. ``c`` is the channel count as a Python int, so an exported
    graph keeps it static (BatchNorm needs it). s = 1 returns the map itself."""
    if s == 1:
        return x
    b, _, h, w = x.shape
    gh, gw = (h + s - 1) // s, (w + s - 1) // s
    x = F.pad(x, (0, gw * s - w, 0, gh * s - h))
    return x.view(b, c, s, gh, s, gw).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, gh, gw)


def merge_regions(x: torch.Tensor, s: int, c: int, h, w) -> torch.Tensor:
    """Inverse of ``split_regions``: (B s^2, c, gh, gw) -> (B, c, h, w), the padding cropped."""
    if s == 1:
        return x
    gh, gw = x.shape[-2:]
    x = x.view(-1, s, s, c, gh, gw).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, s * gh, s * gw)
    return x[..., :h, :w]


def biased_routers(model: nn.Module) -> list[ExpertRouter]:
    """The loss-free-balanced routers (``balance='bias'``) in ``model``."""
    return [m for m in model.modules() if isinstance(m, ExpertRouter) and m.balance == "bias"]


def update_selection_biases(model: nn.Module) -> None:
    """After a training batch: move the selection bias of every loss-free-balanced router in ``model``."""
    for router in biased_routers(model):
        router.update_bias()


def switch_loss(share: torch.Tensor, mean_prob: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load balance ``Ne * sum_e f_e P_e``: f_e (Ne,) share of routing slots, P_e (Ne,) mean router
    probability. 1.0 when routing is uniform."""
    return share.numel() * (share * mean_prob).sum()
