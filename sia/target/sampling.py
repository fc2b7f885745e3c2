"""The sampling distribution: logits → log-probabilities at a temperature and a top-p.

The local sampler draws from it and the trainer scores recorded tokens with it, so a
policy update starts from exactly the policy that sampled (importance ratio 1 at step 0).
Temperature 0 (greedy) is scored as temperature 1: the argmax was taken from that
distribution, and no other is defined. It never changes which tokens are kept for a
target token: a recorded token is always scored, even if a later policy would cut it.
"""

from __future__ import annotations

from typing import Any


def scoring_temperature(temperature: float) -> float:
    """The temperature whose distribution a sample at `temperature` is scored under."""
    return temperature if temperature > 0 else 1.0


def sampling_logprobs(logits: Any, temperature: Any, top_p: Any, keep: Any = None) -> Any:
    """log softmax(logits / T) restricted to the nucleus of mass `top_p` and renormalised.

    `logits` [..., V]; `temperature`, `top_p` broadcast to logits[..., 0] (floats or
    tensors); `keep` (same shape as logits[..., 0], token ids) is a token always kept in
    the nucleus. The nucleus is the smallest set of most probable tokens whose mass
    reaches `top_p` (the token that crosses it is kept), as in transformers' top-p.
    """
    import torch

    temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    top_p = torch.as_tensor(top_p, dtype=logits.dtype, device=logits.device)
    logp = torch.log_softmax(logits / temperature.unsqueeze(-1), dim=-1)
    if bool((top_p >= 1.0).all()):
        return logp
    sorted_logp, order = torch.sort(logp, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_logp.exp(), dim=-1) - sorted_logp.exp()
    cut_sorted = (mass_before >= top_p.unsqueeze(-1)) & (top_p < 1.0).unsqueeze(-1)
    cut = torch.zeros_like(cut_sorted).scatter(-1, order, cut_sorted)
    if keep is not None:
        cut = cut.scatter(-1, keep.unsqueeze(-1), False)
    return torch.log_softmax(logp.masked_fill(cut, float("-inf")), dim=-1)
