"""Reference harness for trimul: answers every sample with the reference implementation
(reward about 1.0, the speed of the reference). It does not call the model; a better
harness asks the model for a faster kernel and checks what it gets back."""

REFERENCE_KERNEL = '''
import torch
from torch.nn import functional as F


def custom_kernel(x, mask, weights):
    w = weights
    dim, hidden_dim = x.shape[-1], w["left_proj.weight"].shape[0]
    x = F.layer_norm(x, (dim,), w["norm.weight"], w["norm.bias"])
    mask = mask.unsqueeze(-1).to(x.dtype)
    left = F.linear(x, w["left_proj.weight"]) * mask * torch.sigmoid(F.linear(x, w["left_gate.weight"]))
    right = F.linear(x, w["right_proj.weight"]) * mask * torch.sigmoid(F.linear(x, w["right_gate.weight"]))
    out = torch.einsum("... i k d, ... j k d -> ... i j d", left, right)
    out = F.layer_norm(out, (hidden_dim,), w["to_out_norm.weight"], w["to_out_norm.bias"])
    return F.linear(out * torch.sigmoid(F.linear(x, w["out_gate.weight"])), w["to_out.weight"])
'''


def solve(sample, model):
    return REFERENCE_KERNEL
