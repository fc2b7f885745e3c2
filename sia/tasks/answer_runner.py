"""What runs inside the answer sandbox: load the answer, then call it on each input it is sent.

Run as `python -I -S answer_runner.py KIND SITE_PACKAGES RESULT_FD` by
`sia.tasks.answer_sandbox`, it imports nothing of sia. Requests arrive on stdin and
responses leave on RESULT_FD, both as frames: a 4-byte big-endian header length, a JSON
header, then the raw bytes of the header's `arrays` (dtype, shape), back to back. It
applies its resource limits (SIA_LIMITS) to itself before the answer is read, and answers
the scorer's calibration echoes before the answer is loaded, so those round trips measure
the channel alone. Everything after the answer is loaded is the answer's to subvert: the
scorer trusts none of it (outputs are checked, call times are the scorer's own).
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import time
from typing import Any

FUNCTION_OF = {"trimul": "custom_kernel", "denoise": "denoise"}


def apply_limits() -> None:
    memory, cpu, file_size, threads = (int(v) for v in os.environ.pop("SIA_LIMITS").split())
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_NPROC, (threads, threads))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def read_exactly(count: int) -> bytes:
    chunks, left = [], count
    while left:
        chunk = os.read(0, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the scorer closed the request channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive() -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack(">I", read_exactly(4))
    header = json.loads(read_exactly(length))
    return header, read_exactly(int(header.get("nbytes", 0)))


def send(fd: int, header: dict[str, Any], payload: bytes = b"") -> None:
    header = {**header, "nbytes": len(payload)}
    encoded = json.dumps(header).encode()
    data = memoryview(struct.pack(">I", len(encoded)) + encoded + payload)
    while data:
        data = data[os.write(fd, data):]


def split_arrays(header: dict[str, Any], payload: bytes) -> list[tuple[str, str, list[int], bytes]]:
    arrays, offset = [], 0
    for spec in header["arrays"]:
        end = offset + int(spec["size"])
        arrays.append((spec["name"], spec["dtype"], spec["shape"], payload[offset:end]))
        offset = end
    return arrays


class Trimul:
    """Calls `custom_kernel(x, mask, weights)` on torch tensors, one intra-op thread."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.torch = torch

    def inputs(self, header: dict[str, Any], payload: bytes) -> tuple[Any, Any, dict[str, Any]]:
        tensors = {name: self.torch.frombuffer(bytearray(data), dtype=getattr(self.torch, dtype))
                   .reshape(shape) for name, dtype, shape, data in split_arrays(header, payload)}
        x, mask = tensors.pop("x"), tensors.pop("mask")
        return x, mask, {name.removeprefix("w:"): value for name, value in tensors.items()}

    def call(self, function: Any, header: dict[str, Any], payload: bytes) -> tuple[Any, float]:
        x, mask, weights = self.inputs(header, payload)
        with self.torch.no_grad():
            start = time.perf_counter_ns()
            output = function(x, mask, weights)
            return output, (time.perf_counter_ns() - start) / 1000.0

    def encode(self, output: Any) -> tuple[dict[str, Any], bytes]:
        torch = self.torch
        if not isinstance(output, torch.Tensor):
            return {"type": type(output).__name__}, b""
        shape = [int(n) for n in output.shape]
        if not (output.is_floating_point() or output.is_complex()):
            return {"dtype": str(output.dtype).removeprefix("torch."), "shape": shape}, b""
        values = output.detach().to(device="cpu", dtype=torch.float32).contiguous()
        data = values.numpy().tobytes()
        return {"arrays": [{"name": "out", "dtype": "float32", "shape": shape, "size": len(data)}]}, data

    def echo(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        self.inputs(header, payload)
        return self.encode(self.torch.zeros(header["reply_shape"]))


class Denoise:
    """Calls `denoise(train_counts)` on a numpy matrix and returns float64 values."""

    def __init__(self) -> None:
        import numpy

        self.numpy = numpy

    def call(self, function: Any, header: dict[str, Any], payload: bytes) -> tuple[Any, float]:
        (_, dtype, shape, data), = split_arrays(header, payload)
        counts = self.numpy.frombuffer(data, dtype=dtype).reshape(shape).copy()
        start = time.perf_counter_ns()
        output = function(counts)
        return output, (time.perf_counter_ns() - start) / 1000.0

    def encode(self, output: Any) -> tuple[dict[str, Any], bytes]:
        try:
            values = self.numpy.ascontiguousarray(self.numpy.asarray(output, dtype=self.numpy.float64))
        except (TypeError, ValueError) as error:
            return {"problem": f"output is not a numeric matrix ({type(output).__name__}: {error})"}, b""
        data = values.tobytes()
        return {"arrays": [{"name": "out", "dtype": "float64", "shape": list(values.shape),
                            "size": len(data)}]}, data

    def echo(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        split_arrays(header, payload)
        return self.encode(self.numpy.zeros(header["reply_shape"]))


def load(source: str, function: str) -> tuple[Any, dict[str, str] | None]:
    try:
        code = compile(source, "<answer>", "exec")
    except (SyntaxError, ValueError) as error:
        return None, {"failure": "syntax_error", "detail": f"{type(error).__name__}: {error}"}
    namespace: dict[str, Any] = {"__name__": "answer"}
    try:
        exec(code, namespace)  # noqa: S102 - the sandbox exists to run it
    except MemoryError:
        return None, {"failure": "memory", "detail": "MemoryError while loading the answer"}
    except Exception as error:
        return None, {"failure": "import_error", "detail": f"{type(error).__name__}: {error}"[:2000]}
    candidate = namespace.get(function)
    if not callable(candidate):
        return None, {"failure": "no_function", "detail": f"the answer defines no function `{function}`"}
    return candidate, None


def main(kind: str, site_packages: str, result_fd: int) -> None:
    apply_limits()
    sys.path.append(site_packages)
    library = Trimul() if kind == "trimul" else Denoise()
    header, payload = receive()
    while header["op"] == "echo":
        send(result_fd, *library.echo(header, payload))
        header, payload = receive()
    function, failed = load(payload.decode("utf-8"), FUNCTION_OF[kind])
    send(result_fd, failed or {"ready": True})
    if failed:
        return
    while True:
        header, payload = receive()
        if header["op"] != "call":
            return
        try:
            output, spent_us = library.call(function, header, payload)
        except MemoryError:
            send(result_fd, {"raised": "MemoryError: out of memory"})
            continue
        except Exception as error:
            send(result_fd, {"raised": f"{type(error).__name__}: {error}"[:2000]})
            continue
        reply, data = library.encode(output)
        send(result_fd, {**reply, "us": spent_us}, data)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
