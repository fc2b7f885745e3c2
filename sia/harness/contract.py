"""The harness contract: what a harness is, what it may use, and how it is checked.

A harness is the text of one Python module. It must define, at top level::

    def solve(sample: dict, model) -> str:
        ...

- ``sample`` is one task sample as a JSON-like dict of its *public* fields only (its
  label never reaches a harness).
- ``os.environ.get("SIA_TRAIN_EXAMPLES")``, when set, is the path of a read-only JSONL file
  of the task's public training examples, one JSON object per line: a train sample's
  public fields (without "options") plus its "label" (a string, or a list for multi-label
  tasks). The sample being answered is never among them, and dev and test labels never
  are. The variable is absent when the task makes no label public, so a harness that uses
  the examples must also work without them.
- ``model`` is the harness's only way to the target model::

      model.complete(prompt: str, *, max_tokens: int = 64, temperature: float = 1.0,
                     stop: list[str] | None = None, n: int = 1) -> str | list[str]
      model.chat(messages: list[dict], **params) -> str

  ``complete`` returns one string when ``n == 1`` and a list of ``n`` strings otherwise.
  ``chat`` takes OpenAI-style ``[{"role": ..., "content": ...}]`` messages and the same
  keyword parameters. Every call is recorded into the episode's trajectory (prompt,
  parameters, completion, token ids, log-probabilities), which is what weight training
  learns from. A call over the episode's budget of calls or tokens raises an error.
- ``solve`` returns the answer as a ``str`` (at most ``MAX_ANSWER_CHARS`` characters).
  Anything else is recorded as ``malformed``.

The harness runs in a fresh process with the standard library only, a wall-clock
limit, a CPU-time limit and a memory limit, in an empty private directory that is
deleted afterwards, with no stdin, no network but the model endpoint, and no
credentials in its environment. What it prints goes to a bounded log tail, never into
the answer. Each ending has a status: ``ok``, ``crash`` (an exception: its type and
message are recorded), ``timeout``, ``memory``, ``malformed`` or ``invalid_harness``
(the source does not parse, has no two-argument ``solve``, or fails on import).
"""

from __future__ import annotations

import ast
import functools
import threading

MAX_ANSWER_CHARS = 100_000
MAX_SOURCE_CHARS = 200_000

HARNESS_CONTRACT = __doc__ or ""
"""The contract text, for user documentation and for the Meta/Feedback Agent prompts."""


_PARSING = threading.Lock()
"""CPython 3.11's AST-to-object conversion keeps its recursion depth per interpreter, not per
thread: parses on several threads at once can fail with "AST constructor recursion depth
mismatch" (a SystemError), as 32 episodes validating their harness together did."""


def validate_harness(source: str) -> list[str]:
    """Static problems with `source` (empty when it is fine), found before any process starts.

    Checking statically first lets an unusable harness be recorded as `invalid_harness`
    with a precise reason instead of spending a sandbox run to learn the same thing.
    Every episode checks its harness, so the verdict is remembered per source.
    """
    if not isinstance(source, str):
        return [f"the harness must be source text, not {type(source).__name__}"]
    return list(_problems(source))


@functools.lru_cache(maxsize=64)
def _problems(source: str) -> tuple[str, ...]:
    return tuple(_check(source))


def _check(source: str) -> list[str]:
    if len(source) > MAX_SOURCE_CHARS:
        return [f"the harness is {len(source)} characters, over the {MAX_SOURCE_CHARS} limit"]
    try:
        with _PARSING:
            tree = ast.parse(source, filename="harness.py")
    except SyntaxError as exc:
        return [f"SyntaxError: {exc.msg} (line {exc.lineno})"]
    except ValueError as exc:
        return [f"the harness does not parse: {exc}"]
    except (RecursionError, MemoryError) as exc:  # the parser's own stack, on deep nesting
        return [f"the harness nests too deeply to parse ({type(exc).__name__})"]
    solves = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
              and node.name == "solve"]
    if not solves:
        return ["no top-level function `solve(sample, model)` is defined"]
    solve = solves[-1]
    if isinstance(solve, ast.AsyncFunctionDef):
        return ["`solve` must be a plain function, not `async def`"]
    args = solve.args
    positional = args.posonlyargs + args.args
    required = len(positional) - len(args.defaults)
    if required > 2 or any(d is None for d in args.kw_defaults):
        return ["`solve` must be callable as solve(sample, model): it requires other arguments"]
    if len(positional) < 2 and args.vararg is None:
        return [f"`solve` must take two arguments (sample, model), it takes {len(positional)}"]
    return []
