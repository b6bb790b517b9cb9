"""Tracing statistics: one fp32 accumulator per layer, row (sequence) and neuron (docs/method.md section 3).

Every kind is one update rule over the FFN intermediate activation `a` (B, T, I) of the traced tokens:

    A[l] <- decay[b] * A[l] + sum_t w[b, t] * f(a[b, t])

- l2:      f = a^2, w = 1, decay = 1;               the score base is ||a_j|| = sqrt(A_j)
- ema(d):  f = |a|; the first forward after a reset: decay = 0 and w_t = d^(n-1-t) / sum_s d^(n-1-s);
           later forwards: A <- d A + (1 - d) |a_new| (for n tokens at once: decay d^n, w_t = (1 - d) d^(n-1-t));
           the score base is A_j
- griffin: f = (a / ||a_t||)^2 (each token's row normalised to unit L2 norm), w = 1; base sqrt(A_j)
The weights w and decays are built by the controller (they carry padding, segment boundaries and resets), so
this module only does arithmetic, on the device, without host syncs.

For depth-aware allocation it also keeps, per layer and row, the sums of c_t = cos(h_t, o_t) and
r_t = ||o_t - h_t|| / ||h_t|| over the traced tokens (h: residual entering the FFN, o: what the FFN adds).
"""
from __future__ import annotations

import torch

from dart.engine.placement import Layered, Spans


def token_values(kind: str, a: torch.Tensor) -> torch.Tensor:
    """f(a) in fp32."""
    a = a.float()
    if kind == "l2":
        return a.square()
    if kind == "ema":
        return a.abs()
    if kind == "griffin":
        return (a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)).square()
    raise ValueError(kind)


def ema_weights(valid: torch.Tensor, decay: float, fresh: torch.Tensor, group=None, head: int = 0,
                normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The EMA's per-token weights (B, T) and per-row decays (B,) for the traced tokens `valid` (B, T, 0/1 float, in
    order) of one model forward, equal to the updates a run of forwards would make, A <- decay * A + sum_t w_t |a_t|.
    The one rule for every driver: the first `group` traced tokens of a row (None: all of them; an int or a (B,)
    tensor) were one forward, each later token a forward of its own. A row of `fresh` (B,) bool starts from zero: its
    first forward's tokens get d^(q-1-j) / Z (Z: the sum of those powers; q tokens), every later token (1 - d), each
    update decaying what came before by d; the other rows continue: (1 - d) d^(n-1-j), decay d^n.
    head: the fresh first forward's first `head` tokens are already in A with the un-normalised weights d^(head-1-t)
    (a prompt whose common head ran once: `normalise=False` makes those weights); the decay rescales them."""
    d = torch.as_tensor(decay, dtype=torch.float32, device=valid.device)
    n = valid.sum(dim=1, keepdim=True)  # tokens per row
    j = valid.cumsum(dim=1) - 1  # index of each token among its row's traced tokens
    q = n if group is None else torch.minimum(torch.as_tensor(group, dtype=torch.float32, device=valid.device)
                                              .reshape(-1, 1).expand_as(n), n)
    first = (j < q) & (valid > 0)
    powers = torch.pow(d, (n - 1 - j).clamp_min(0)) * valid
    own = torch.pow(d, (q - 1 - j).clamp_min(0)) * first  # the first forward's powers
    Z = torch.ones_like(n)
    if normalise:
        Z = own.sum(dim=1, keepdim=True) + torch.pow(d, q) * torch.pow(d, torch.arange(head, device=valid.device,
                                                                                     dtype=torch.float32)).sum()
        Z = Z.clamp_min(1e-30)
    lead = own / Z
    if group is not None:  # the later single-token forwards decay the first one's contribution
        lead = lead * torch.pow(d, n - q)
    w = torch.where(fresh[:, None] & first, lead, (1.0 - decay) * powers)
    restart = torch.pow(d, n[:, 0]) / Z[:, 0] if head else torch.zeros_like(n[:, 0])
    row_decay = torch.where(fresh, restart, torch.pow(d, n[:, 0]))
    return w, row_decay


class Statistics:
    """A (L, B, I) fp32, plus alignment sums (L, B, 3): sum c_t, sum r_t, token count; each layer's on that
    layer's device (dart.engine.placement.Layered)."""

    def __init__(self, spans: Spans | int, width: int, kind: str, device=None, alignment: bool = False):
        """spans: the layers' device groups, or a layer count (all on `device`)."""
        if isinstance(spans, int):
            spans = Spans([torch.device(device or "cpu")] * spans)
        self.spans, self.L, self.I, self.kind, self.alignment = spans, spans.L, width, kind, alignment
        self.A = None
        self.reset(0)

    def reset(self, batch: int) -> None:
        if getattr(self, "A", None) is None or self.A.shape[1] != batch:
            z = lambda *shape: Layered.build(self.spans, lambda n, d: torch.zeros(n, *shape, dtype=torch.float32, device=d))  # noqa: E731
            self.A = z(batch, self.I)
            self.align = z(batch, 3)
        else:
            self.A.zero_()
            self.align.zero_()

    def select_rows(self, index: torch.Tensor) -> None:
        self.A = self.A.map(lambda p: p.index_select(1, index.to(p.device)))
        self.align = self.align.map(lambda p: p.index_select(1, index.to(p.device)))

    def reorder(self, layer: int, order: torch.Tensor) -> None:
        """Layer `layer`'s neurons into `order` (the controller's neuron moves, dart.engine.union)."""
        self.A[layer] = self.A[layer].index_select(-1, order)

    def move(self, layer: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Layer `layer`'s neurons at src copied to dst, in place."""
        self.A[layer].index_copy_(-1, dst, self.A[layer].index_select(-1, src))

    def clear_rows(self, rows: torch.Tensor) -> None:
        """Zero the statistics of rows (B,) bool (a re-trace after a drift trigger)."""
        keep = (~rows).to(torch.float32)
        for x in (self.A, self.align):
            for _, d, p in x.groups():
                p.mul_(keep.to(d)[None, :, None])

    def update(self, layer: int, a: torch.Tensor, w: torch.Tensor, decay: torch.Tensor | None) -> None:
        """a: (B, T, I) activations; w: (B, T) fp32 weights (0 = not traced); decay: (B,) or None (= 1).
        All on the layer's device (the plan's tensors are moved there once per forward)."""
        contrib = torch.bmm(w.unsqueeze(1), token_values(self.kind, a.detach())).squeeze(1)  # (B, I); never differentiated
        if decay is None:
            self.A[layer].add_(contrib)
        else:
            self.A[layer].mul_(decay[:, None]).add_(contrib)

    def update_alignment(self, layer: int, h: torch.Tensor, o: torch.Tensor, w: torch.Tensor, reference: str) -> None:
        """h: residual entering the FFN, o: what the FFN adds, both (B, T, D); w: (B, T) trace weights (0/1)."""
        h, o = h.detach().float(), o.detach().float()
        if reference == "residual":  # compare the residual before and after the FFN
            after = h + o
            c = torch.nn.functional.cosine_similarity(h, after, dim=-1, eps=1e-12)
            r = o.norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-12)
        else:  # the published online rule
            c = torch.nn.functional.cosine_similarity(h, o, dim=-1, eps=1e-12)
            r = (o - h).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-12)
        m = (w > 0).float()
        self.align[layer] += torch.stack([(c * m).sum(1), (r * m).sum(1), m.sum(1)], dim=-1)

    def base(self, sl: slice | None = None) -> torch.Tensor:
        """The per-neuron statistic scores multiply, of layers `sl` (inside one device group; None: all layers,
        gathered on the home device): ||a|| for l2/griffin, A for ema. (n, B, I)."""
        A = self.A.gather() if sl is None else self.A.view(sl)
        return A.sqrt() if self.kind in ("l2", "griffin") else A

    def layer_alignment(self) -> torch.Tensor:
        """S_l = (1 - mean c) * mean r, (B, L), on the home device."""
        align = self.align.gather()
        n = align[..., 2].clamp_min(1.0)
        mean_c, mean_r = align[..., 0] / n, align[..., 1] / n
        return ((1.0 - mean_c) * mean_r).transpose(0, 1)

    def nbytes(self) -> int:
        return self.A.nbytes() + self.align.nbytes()
