"""Reference TriMul: the outgoing triangle multiplicative update (AlphaFold2 Algorithm 11).

Followed: gpu-mode/reference-kernels, `problems/bioml/trimul/reference.py` (the `TriMul`
module, `ref_kernel`, `generate_input`), itself based on lucidrains'
triangle-multiplicative-module. For `x: [B, N, N, C]`, `mask: [B, N, N]`:

    x      = LayerNorm_C(x)
    left   = mask * (W_left x)  * sigmoid(W_left_gate x)          # [B, N, N, H]
    right  = mask * (W_right x) * sigmoid(W_right_gate x)
    out_ij = sum_k left_ik * right_jk                              # "outgoing" edges
    out    = W_to_out( LayerNorm_H(out) * sigmoid(W_out_gate x) )  # [B, N, N, C]

All linear maps have no bias; weights are a dict keyed by the upstream parameter names so a
candidate written for the GPU MODE benchmark reads them unchanged.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Distribution = Literal["normal", "cauchy"]

WEIGHT_NAMES = (
    "norm.weight",
    "norm.bias",
    "left_proj.weight",
    "right_proj.weight",
    "left_gate.weight",
    "right_gate.weight",
    "out_gate.weight",
    "to_out_norm.weight",
    "to_out_norm.bias",
    "to_out.weight",
)

CAUCHY_SCALE = 2.0
"""Scale of the heavy-tailed inputs, as upstream's `Cauchy(0, 2)`."""


@dataclass(frozen=True)
class ShapeSpec:
    """Problem size: batch, sequence length N, channel dim C and hidden dim H."""

    batch: int
    seq_len: int
    dim: int
    hidden_dim: int

    def label(self) -> str:
        return f"B{self.batch}-N{self.seq_len}-C{self.dim}-H{self.hidden_dim}"


@dataclass(frozen=True)
class TrimulInputs:
    """One generated problem: input, 0/1 float mask, and weights by upstream name."""

    x: torch.Tensor
    mask: torch.Tensor
    weights: dict[str, torch.Tensor]


class TriMul(nn.Module):
    """The upstream module, parameter for parameter (see the module docstring)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.left_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.right_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.left_gate = nn.Linear(dim, hidden_dim, bias=False)
        self.right_gate = nn.Linear(dim, hidden_dim, bias=False)
        self.out_gate = nn.Linear(dim, hidden_dim, bias=False)
        self.to_out_norm = nn.LayerNorm(hidden_dim)
        self.to_out = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        mask = mask.unsqueeze(-1)
        left = self.left_proj(x) * mask * self.left_gate(x).sigmoid()
        right = self.right_proj(x) * mask * self.right_gate(x).sigmoid()
        out_gate = self.out_gate(x).sigmoid()
        out = torch.einsum("... i k d, ... j k d -> ... i j d", left, right)
        out = self.to_out_norm(out) * out_gate
        return self.to_out(out)


def module_from_weights(weights: dict[str, torch.Tensor]) -> TriMul:
    """A `TriMul` holding exactly the given weights (sizes read from them)."""
    hidden_dim, dim = weights["left_proj.weight"].shape
    module = TriMul(dim=dim, hidden_dim=hidden_dim).to(weights["left_proj.weight"].device)
    module.load_state_dict({name: weights[name] for name in WEIGHT_NAMES})
    return module


def _outgoing(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    dim, hidden_dim = x.shape[-1], w["left_proj.weight"].shape[0]
    x = F.layer_norm(x, (dim,), w["norm.weight"], w["norm.bias"])
    mask = mask.unsqueeze(-1).to(x.dtype)
    left = F.linear(x, w["left_proj.weight"]) * mask * torch.sigmoid(F.linear(x, w["left_gate.weight"]))
    right = F.linear(x, w["right_proj.weight"]) * mask * torch.sigmoid(F.linear(x, w["right_gate.weight"]))
    out = torch.einsum("... i k d, ... j k d -> ... i j d", left, right)
    out = F.layer_norm(out, (hidden_dim,), w["to_out_norm.weight"], w["to_out_norm.bias"])
    return F.linear(out * torch.sigmoid(F.linear(x, w["out_gate.weight"])), w["to_out.weight"])


def reference_kernel_source() -> str:
    """The reference's CPU computation as an answer module defining `custom_kernel`.

    The scorer times the reference by running this in an answer sandbox of its own, so the
    reference and the answer are measured the same way, channel and all.
    """
    return ("import torch\nfrom torch.nn import functional as F\n\n\n"
            f"{inspect.getsource(_outgoing)}\n\ncustom_kernel = _outgoing\n")


@torch.no_grad()
def trimul_reference(x: torch.Tensor, mask: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """The functional form every candidate must match: `(x, mask, weights) -> out`.

    Same operations as `TriMul.forward` without building a module per call (upstream's
    `ref_kernel` does, which would charge module construction to the reference's time).
    TF32 is off on CUDA, as upstream's `DisableCuDNNTF32` does for accuracy.
    """
    if not x.is_cuda:
        return _outgoing(x, mask, weights)
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return _outgoing(x, mask, weights)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def make_inputs(
    shape_spec: ShapeSpec,
    seed: int,
    distribution: Distribution = "normal",
    masked: bool = True,
    device: str | torch.device = "cpu",
) -> TrimulInputs:
    """Inputs and weights drawn deterministically from `seed`, distributed as upstream.

    Input is N(0, 1) or Cauchy(0, 2); the mask is 0/1 uniform when `masked`, else all
    ones; LayerNorm weights/biases are N(0, 1); projection and gate weights are
    N(0, 1)/sqrt(H), the output projection N(0, 1)/sqrt(C). Unlike upstream (whose Cauchy
    draw ignores its generator), every draw here comes from one CPU generator, so the
    same seed gives the same tensors on any device; the mask is float32 rather than int64.
    """
    if distribution not in ("normal", "cauchy"):
        raise ValueError(f"distribution must be 'normal' or 'cauchy', got {distribution!r}")
    b, n, c, h = shape_spec.batch, shape_spec.seq_len, shape_spec.dim, shape_spec.hidden_dim
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if distribution == "cauchy":
        uniform = torch.rand((b, n, n, c), generator=gen, dtype=torch.float64)
        x = (CAUCHY_SCALE * torch.tan(math.pi * (uniform - 0.5))).to(torch.float32)
    else:
        x = torch.randn((b, n, n, c), generator=gen, dtype=torch.float32)
    if masked:
        mask = torch.randint(0, 2, (b, n, n), generator=gen).to(torch.float32)
    else:
        mask = torch.ones((b, n, n), dtype=torch.float32)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen, dtype=torch.float32)

    weights = {
        "norm.weight": randn(c),
        "norm.bias": randn(c),
        "left_proj.weight": randn(h, c) / math.sqrt(h),
        "right_proj.weight": randn(h, c) / math.sqrt(h),
        "left_gate.weight": randn(h, c) / math.sqrt(h),
        "right_gate.weight": randn(h, c) / math.sqrt(h),
        "out_gate.weight": randn(h, c) / math.sqrt(h),
        "to_out_norm.weight": randn(h),
        "to_out_norm.bias": randn(h),
        "to_out.weight": randn(c, h) / math.sqrt(c),
    }
    return TrimulInputs(
        x=x.to(device).contiguous(),
        mask=mask.to(device),
        weights={name: w.to(device) for name, w in weights.items()},
    )
