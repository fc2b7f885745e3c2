"""A TriMul kernel reached in an answer sandbox: inputs out as raw tensors, outputs back.

Only `x`, `mask` and the weights leave the scorer. Every call's reply is read back into a
tensor (or a stand-in for what the kernel returned instead) for `evaluate_calls` to check.
A call's time is the scorer's own measure: its round trip less the channel's overhead,
the fastest round trip of echoes of the same byte sizes sent before any kernel was loaded
(`calibrate`). The time the sandbox reports for the call goes into the
sandbox's `CallLog` beside the round trip, as a cross-check only.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sia.tasks.answer_sandbox import AnswerSandbox, CandidateRaised, SandboxLost, array_specs
from sia.tasks.trimul.evaluator import CandidateCall
from sia.tasks.trimul.reference import ShapeSpec, TrimulInputs, make_inputs

CALIBRATION_CALLS = 9
MAX_RANK = 8


def _frame(inputs: TrimulInputs) -> tuple[list[dict[str, Any]], bytes]:
    named = [("x", inputs.x), ("mask", inputs.mask),
             *((f"w:{name}", value) for name, value in inputs.weights.items())]
    return array_specs([(name, "float32", tuple(value.shape),
                         value.detach().to(torch.float32).contiguous().numpy().tobytes())
                        for name, value in named])


def _output_bytes(spec: ShapeSpec) -> int:
    return spec.batch * spec.seq_len * spec.seq_len * spec.dim * 4


def _shape(value: object) -> tuple[int, ...]:
    if (not isinstance(value, list) or len(value) > MAX_RANK
            or not all(isinstance(n, int) and 0 <= n < 2**31 for n in value)):
        raise SandboxLost("incorrect", f"the sandbox sent a malformed shape {str(value)[:80]}")
    return tuple(value)


def _stand_in(type_name: object) -> object:
    """An object whose type is named as what the kernel returned, for the mismatch message."""
    return type(str(type_name)[:80] or "object", (), {})()


def _received(header: dict[str, Any], payload: bytes) -> object:
    if "raised" in header:
        raise CandidateRaised(str(header["raised"])[:2000])
    if "type" in header:
        return _stand_in(header["type"])
    if "dtype" in header:
        dtype = getattr(torch, str(header["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            return _stand_in(f"tensor of {str(header['dtype'])[:40]}")
        return torch.empty(_shape(header["shape"]), dtype=dtype, device="meta")
    specs = header.get("arrays")
    if not (isinstance(specs, list) and len(specs) == 1 and isinstance(specs[0], dict)):
        raise SandboxLost("incorrect", "the sandbox sent a reply with no output")
    shape = _shape(specs[0].get("shape"))
    if math.prod(shape) * 4 != len(payload):
        raise SandboxLost("incorrect", f"the sandbox sent {len(payload)} bytes for shape {shape}")
    return torch.frombuffer(bytearray(payload), dtype=torch.float32).reshape(shape)


def calibrate(sandbox: AnswerSandbox, spec: ShapeSpec, seed: int) -> float:
    """The channel's round trip for one call of this size (µs), before any answer code runs.

    The fastest of the echoes after the first: the least a call's transport takes, so a
    call's round trip less it is never less than the time the call spent in the kernel.
    """
    specs, payload = _frame(make_inputs(spec, seed, "normal", True))
    reply_shape = [spec.batch, spec.seq_len, spec.seq_len, spec.dim]
    trips = [sandbox.exchange({"op": "echo", "arrays": specs, "reply_shape": reply_shape}, payload,
                              max_bytes=_output_bytes(spec)).round_trip_us
             for _ in range(CALIBRATION_CALLS)]
    return min(trips[1:])


def remote_kernel(sandbox: AnswerSandbox, spec: ShapeSpec, overhead_us: float) -> CandidateCall:
    """Runs the sandbox's loaded kernel on each call's inputs; outputs up to 4x the expected size.

    A call takes its round trip less `overhead_us` (never below 0): what the kernel reports
    about itself does not change its time.
    """
    limit = 4 * _output_bytes(spec) + 2**20

    def call(inputs: TrimulInputs) -> tuple[object, float]:
        specs, payload = _frame(inputs)
        reply = sandbox.exchange({"op": "call", "arrays": specs}, payload, max_bytes=limit)
        received = _received(reply.header, reply.payload)
        reported = reply.header.get("us")
        sandbox.log.reported_us.append(float(reported) if isinstance(reported, (int, float)) else -1.0)
        sandbox.log.round_trip_us.append(reply.round_trip_us)
        return received, max(0.0, reply.round_trip_us - overhead_us)

    return call
