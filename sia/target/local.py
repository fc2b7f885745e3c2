"""The local target backend: a transformers causal LM plus an optional peft adapter.

Generation returns exact token ids and per-token logprobs of the sampling distribution
(after temperature and top-p, `sia.target.sampling`, the function the trainer scores
tokens with), which the gateway records into trajectories for training. A sample that
ended at the end-of-sequence token excludes it, with its logprob (as vLLM's backend
does); the trainer appends the EOS again and scores it itself. Calls are
serialised by a lock: the tiny default model is fastest on one thread, and the global
torch RNG is seeded per call so a call's samples depend only on its seed.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import cast


@dataclass(frozen=True)
class Sample:
    text: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str


class LocalBackend:
    def __init__(self, model_dir: Path, adapter_dir: Path | None = None, threads: int = 1) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|torch|peft)\b")
        torch.set_num_threads(threads)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if adapter_dir is not None:
            from peft import PeftModel

            # A PeftModel generates like the model it wraps.
            model = PeftModel.from_pretrained(model, adapter_dir)  # type: ignore[assignment]
        self.model = model.eval()
        self.name = Path(model_dir).name + ("+" + Path(adapter_dir).name[:12] if adapter_dir else "")
        self._lock = threading.Lock()

    def sample(self, prompt: str, *, max_tokens: int, temperature: float, n: int, seed: int,
               stop: list[str] | None = None, top_p: float = 1.0) -> list[Sample]:
        """`n` completions of `prompt`; temperature 0 is greedy (scored at temperature 1)."""
        from sia.target.sampling import sampling_logprobs, scoring_temperature

        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        torch = self.torch
        encoded = self.tokenizer(prompt, return_tensors="pt")
        prompt_ids = encoded["input_ids"][0].tolist()
        eos = self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            torch.manual_seed(seed)
            input_ids = encoded["input_ids"].repeat(n, 1)
            attention = encoded["attention_mask"].repeat(n, 1)
            generated = torch.empty((n, 0), dtype=torch.long)
            logprobs = torch.empty((n, 0))
            finished = torch.zeros(n, dtype=torch.bool)
            past = None
            step_ids = input_ids
            for _ in range(max_tokens):
                out = self.model(input_ids=step_ids, attention_mask=attention, past_key_values=past,
                                 use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1, :].float()
                dist = sampling_logprobs(logits, scoring_temperature(temperature), top_p)
                if temperature <= 0:
                    token = dist.argmax(dim=-1)
                else:
                    token = torch.multinomial(dist.exp(), 1).squeeze(-1)
                chosen = dist.gather(-1, token[:, None]).squeeze(-1)
                if eos is not None:
                    token = torch.where(finished, torch.full_like(token, eos), token)
                generated = torch.cat([generated, token[:, None]], dim=1)
                logprobs = torch.cat([logprobs, chosen[:, None]], dim=1)
                if eos is not None:
                    finished |= token == eos
                    if bool(finished.all()):
                        break
                step_ids = token[:, None]
                attention = torch.cat([attention, torch.ones((n, 1), dtype=attention.dtype)], dim=1)
        return [self._finish(prompt_ids, generated[i].tolist(), logprobs[i].tolist(), eos, stop)
                for i in range(n)]

    def _finish(self, prompt_ids: list[int], ids: list[int], logprobs: list[float],
                eos: int | None, stop: list[str] | None) -> Sample:
        reason = "length"
        if eos is not None and eos in ids:
            cut = ids.index(eos)
            ids, logprobs, reason = ids[:cut], logprobs[:cut], "stop"
        text = cast(str, self.tokenizer.decode(ids, skip_special_tokens=True))  # one id list, one str
        for marker in stop or []:
            if marker and marker in text:
                text, reason = text[: text.index(marker)], "stop"
        return Sample(text, prompt_ids, ids, [round(p, 6) for p in logprobs], reason)
