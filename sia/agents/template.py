"""The template harness: a generic `solve` whose behaviour is set by a few knobs.

The built-in policy edits harnesses only by changing these knobs (the constants at the
top of the rendered module), so every edit it makes is small, named and diffable. LLM
agents may write any harness; this one is the offline default and a starting point.

Two renderings share the knobs. The classic one (every optimizer knob at its default)
is byte for byte the module sia has always rendered, so recorded harness hashes and the
tasks' reference harnesses stay valid. The optimizer one adds the well-known non-LLM
prompt optimizers (DSPy's LabeledFewShot, KNNFewShot, answer constraints and
self-consistency are the anchor), all task-agnostic: the public training examples
(`SIA_TRAIN_EXAMPLES`, one JSON object a line with a "label") are ranked by character
n-gram similarity to the sample; the nearest ones' labels can become the candidate
answers, be shown as demonstrations, and decide by a similarity-weighted vote when no
completion names a candidate. A label that is a list (a multi-label task) is shown in a
demonstration as its items joined by ", ", and votes item by item: each item is a candidate
answer of its own, supported by every neighbour whose label names it (on LawBench 3-3, 5
neighbours, 5 splits, this raised the vote's dev F1 from 0.299 with whole label sets as the
answers to 0.326; bench/lawbench_harness.py knn).
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, fields, replace

KNOB_NAMES = ("PROMPT", "EXTRACT", "SAMPLES", "TEMPERATURE", "MAX_TOKENS", "FALLBACK")
OPTIMIZER_KNOB_NAMES = ("NEIGHBOURS", "DEMOS", "CANDIDATES", "PROMPT_CHARS", "OVERLAP", "ALSO")
"""Knobs only the optimizer rendering has; a harness without them reads back with their defaults."""


@dataclass(frozen=True)
class Knobs:
    prompt: str = "fields"
    """How the prompt is laid out: "fields" = one `key: value` line per input field, the
    options and an `answer:` cue; "bare" = the question text alone."""
    extract: str = "raw"
    """raw = the completion as is; first_line; option = the first listed option it names."""
    samples: int = 1
    """Completions per sample; more than one → majority vote over extracted answers."""
    temperature: float = 1.0
    max_tokens: int = 4
    fallback: str = "none"
    """none = leave unanswered; first_option = answer the first option when nothing parses;
    nearest = the label with the most similarity among the nearest training examples."""
    neighbours: int = 0
    """How many nearest training examples vote (and offer candidates); 0 = none read."""
    demos: int = 0
    """How many of the nearest training examples the prompt shows with their labels."""
    candidates: str = "options"
    """options = the sample's own options; knn = the nearest examples' labels, item by item
    (the sample's options when there are no examples)."""
    prompt_chars: int = 0
    """The prompt's length limit in characters (0 = none); field values are cut to fit."""
    overlap: float = 0.0
    """How much the neighbours' vote reads the sample (0 = not at all): each voted answer's
    log share of the vote plus OVERLAP times the share of its distinct characters that occur
    in the sample's own text."""
    also: float = 0.0
    """For a multi-label task (labels that are lists): besides the chosen answer, also name
    each other voted answer (two at most) whose support is at least ALSO times the chosen
    one's, so that a sample with two gold labels can get both (0 = one answer)."""

    def with_(self, **changes: object) -> Knobs:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def optimized(self) -> bool:
        """Whether these knobs need the optimizer rendering (an optimizer knob is set)."""
        return self.fallback == "nearest" or any(
            getattr(self, f.name) != f.default for f in fields(self) if f.name.upper() in OPTIMIZER_KNOB_NAMES)


TEMPLATE = '''"""Harness generated from sia's template; the knobs below are what the built-in
Feedback policy edits. Contract: solve(sample, model) -> str."""

PROMPT = {prompt!r}
EXTRACT = {extract!r}
SAMPLES = {samples!r}
TEMPERATURE = {temperature!r}
MAX_TOKENS = {max_tokens!r}
FALLBACK = {fallback!r}


def build_prompt(sample):
    fields = {{k: v for k, v in sample.items() if k not in ("id", "options")}}
    if PROMPT == "bare":
        return str(fields.get("question") or next(iter(fields.values()), ""))
    lines = [f"{{key}}: {{value}}" for key, value in fields.items()]
    if sample.get("options"):
        lines.append("options: " + ", ".join(sample["options"]))
    lines.append("answer:")
    return "\\n".join(lines)


def extract(text, options):
    text = text.strip()
    if EXTRACT == "raw":
        return text or None
    if EXTRACT == "first_line":
        return text.splitlines()[0].strip() if text else None
    words = [w.strip(".,;:!?\\"'").lower() for w in text.split()]
    for word in words:
        for option in options:
            if word == option.lower():
                return option
    return None


def solve(sample, model):
    options = sample.get("options") or []
    completions = model.complete(build_prompt(sample), max_tokens=MAX_TOKENS,
                                 temperature=TEMPERATURE, n=SAMPLES)
    if isinstance(completions, str):
        completions = [completions]
    answers = [a for a in (extract(c, options) for c in completions) if a]
    if answers:
        return max(answers, key=lambda a: (answers.count(a), -answers.index(a)))
    if FALLBACK == "first_option" and options:
        return options[0]
    return ""
'''


OPTIMIZER_CODE = r'''

def render_label(label):
    """A label as answer text: a list's items joined by ", ", anything else as its string."""
    if isinstance(label, list):
        return ", ".join(str(item) for item in label)
    return "" if label is None else str(label)


def load_examples():
    """The public training examples, [] when there are none or the file cannot be read."""
    path = os.environ.get("SIA_TRAIN_EXAMPLES")
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    examples = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and render_label(row.get("label")).strip():
            examples.append(row)
    return examples


def input_text(fields):
    return "\n".join(str(value) for key, value in fields.items() if key not in ("id", "options", "label"))


def grams(text):
    """Counts of the text's characters and character pairs, lowercased (counted in C: every
    episode profiles the whole training set)."""
    text = text.lower()
    counts = Counter(text)
    counts.update(map(str.__add__, text, text[1:]))
    return counts


def profile(examples):
    """Each example's character 1- and 2-gram counts, and in how many examples each gram occurs."""
    documents = [grams(input_text(example)) for example in examples]
    frequency = Counter()
    for document in documents:
        frequency.update(document.keys())
    return documents, frequency


def nearest(sample, examples, k, profiled=None):
    """The k examples most like the sample, with their similarity, most similar first: the
    cosine of idf-weighted sublinear character 1- and 2-gram counts (ties keep file order).

    The sums run in C (map over dict lookups): the whole training set is ranked in every episode."""
    documents, frequency = profiled or profile(examples)
    idf = {gram: math.log((1 + len(documents)) / (1 + count)) + 1 for gram, count in frequency.items()}
    square = {gram: weight * weight for gram, weight in idf.items()}
    counted = {g: c for g, c in grams(input_text(sample)).items() if g in idf}
    linear = {c: 1 + math.log(c) for c in set().union(counted.values(), *(d.values() for d in documents))}
    squared = {c: weight * weight for c, weight in linear.items()}

    def norm(counts):
        return math.sqrt(sum(map(float.__mul__, map(squared.__getitem__, counts.values()),
                                 map(square.__getitem__, counts)))) or 1.0

    scale = norm(counted)
    query = {g: linear[c] * square[g] / scale for g, c in counted.items()}
    similarities = []
    for document in documents:
        shared = query.keys() & document.keys()
        dot = sum(map(float.__mul__, map(query.__getitem__, shared),
                      map(linear.__getitem__, map(document.__getitem__, shared))))
        similarities.append(dot / norm(document))
    order = sorted(range(len(examples)), key=lambda i: -similarities[i])
    return [(examples[i], similarities[i]) for i in order[:k]]


def vote(neighbours):
    """The answers the neighbours' labels support, with their summed similarity, most first;
    each item of a list label counts on its own, so items shared by several label sets add up."""
    weights = {}
    for example, similarity in neighbours:
        label = example["label"]
        for item in label if isinstance(label, list) else [label]:
            answer = render_label(item)
            weights[answer] = weights.get(answer, 0.0) + max(similarity, 0.0)
    return dict(sorted(weights.items(), key=lambda item: -item[1]))


def rarity(examples, profiled=None):
    """Each character's idf over the examples' inputs: text every example shares (a fixed
    instruction, say) says nothing about any one sample."""
    documents, frequency = profiled or profile(examples)
    return {gram: math.log((1 + len(documents)) / (1 + count))
            for gram, count in frequency.items() if len(gram) == 1}


def reread(weights, text, idf):
    """The vote reranked by the sample's text: an answer's support becomes its share of the
    vote times e ** (OVERLAP * the idf-weighted share of its distinct characters in `text`)."""
    total = sum(weights.values()) or 1.0
    lowered, rarest = text.lower(), max(idf.values(), default=1.0)

    def found(answer):
        characters = {c: idf.get(c, rarest) for c in set(answer.lower())}
        whole = sum(characters.values())
        return sum(w for c, w in characters.items() if c in lowered) / whole if whole else 0.0

    reread = {answer: weight / total * math.exp(OVERLAP * found(answer)) for answer, weight in weights.items()}
    return dict(sorted(reread.items(), key=lambda item: -item[1]))


def fit(fields, room):
    """The fields with their longest values cut so that all values together fit in `room`."""
    lengths = sorted(len(str(value)) for value in fields.values())
    cap, used = max(lengths, default=0), 0
    for index, length in enumerate(lengths):
        if used + length * (len(lengths) - index) > room:
            cap = max(0, (room - used) // (len(lengths) - index))
            break
        used += length
    return {key: str(value)[:cap] for key, value in fields.items()}


def block(fields, room):
    if PROMPT == "bare":
        text = str(fields.get("question") or next(iter(fields.values()), ""))
        return [text[:room] if PROMPT_CHARS else text]
    if PROMPT_CHARS:
        fields = fit(fields, room - sum(len(key) + 3 for key in fields))
    return [f"{key}: {value}" for key, value in fields.items()]


def build_prompt(sample, candidates, demos):
    fields = {k: v for k, v in sample.items() if k not in ("id", "options")}
    tail = ["answer:"] if PROMPT != "bare" else []
    if candidates and PROMPT != "bare":
        shown = list(candidates)
        while PROMPT_CHARS and len(shown) > 1 and len(", ".join(shown)) > PROMPT_CHARS // 4:
            shown.pop()
        tail.insert(0, "options: " + ", ".join(shown))
    shots = [({k: v for k, v in demo.items() if k not in ("id", "options", "label")},
              "answer: " + render_label(demo["label"])) for demo in demos]
    fixed = sum(len(line) + 1 for line in tail) + sum(len(answer) + 1 for _, answer in shots)
    room = max(0, PROMPT_CHARS - fixed) // (len(shots) + 1)
    lines = []
    for demo_fields, answer in shots:
        lines += block(demo_fields, room) + [answer]
    return "\n".join(lines + block(fields, room) + tail)


def extract(text, candidates):
    text = text.strip()
    if EXTRACT == "raw":
        return text or None
    if EXTRACT == "first_line":
        return text.splitlines()[0].strip() if text else None
    lowered, found = text.lower(), None
    for candidate in candidates:
        match = re.search("(?<![a-z0-9])" + re.escape(candidate.lower()) + "(?![a-z0-9])", lowered)
        if match and (found is None or (match.start(), -len(candidate)) < found[0]):
            found = ((match.start(), -len(candidate)), candidate)
    return found[1] if found else None


def choose(answers, polled, candidates, weights):
    """The answer with the most support: its share of the completions, plus (when the
    candidates are the neighbours' labels) its share of their similarity, so the model's
    consensus and the neighbours' weigh alike; ties go to the nearer label, then the first named."""
    total = sum(weights.values()) or 1.0
    rank = {candidate: index for index, candidate in enumerate(candidates)}

    def support(answer):
        return answers.count(answer) / polled + weights.get(answer, 0.0) / total

    named = list(dict.fromkeys(answers)) + [c for c in weights if c not in answers]
    return max(named, key=lambda a: (support(a), -rank.get(a, len(rank)), -named.index(a)))


def with_others(first, weights):
    """`first`, and the other voted answers at least ALSO times as supported, joined by ", "."""
    if not ALSO or first not in weights:
        return first
    others = [answer for answer, weight in weights.items()
              if answer != first and weight >= ALSO * weights[first]]
    return ", ".join([first, *others[:2]])


def solve(sample, model):
    options = sample.get("options") or []
    wanted = max(NEIGHBOURS, DEMOS)
    examples = load_examples() if wanted else []
    profiled = profile(examples)
    neighbours = nearest(sample, examples, wanted, profiled) if examples else []
    weights = vote(neighbours[:NEIGHBOURS])
    if OVERLAP and weights:
        weights = reread(weights, input_text(sample), rarity(examples, profiled))
    ranked = list(weights)
    candidates = ranked if CANDIDATES == "knn" and ranked else list(options)
    prompt = build_prompt(sample, candidates, [example for example, _ in neighbours[:DEMOS]])
    completions = model.complete(prompt, max_tokens=MAX_TOKENS, temperature=TEMPERATURE, n=SAMPLES)
    if isinstance(completions, str):
        completions = [completions]
    answers = [a for a in (extract(c, candidates) for c in completions) if a]
    if answers:
        return with_others(choose(answers, len(completions), candidates, weights if candidates == ranked else {}),
                           weights)
    if FALLBACK == "nearest" and ranked:
        return with_others(ranked[0], weights)
    if FALLBACK in ("first_option", "nearest") and options:
        return options[0]
    return ""
'''

OPTIMIZER_HEAD = """\"\"\"Harness generated from sia's template, with its prompt optimizers; the knobs below
are what the built-in Feedback policy edits. Contract: solve(sample, model) -> str.
Training examples, when public, are read from the JSONL file named by SIA_TRAIN_EXAMPLES.\"\"\"

import json
import math
import os
import re
from collections import Counter

"""


def render(knobs: Knobs) -> str:
    """The harness source for `knobs`: the classic module unless an optimizer knob is set."""
    if not knobs.optimized:
        return TEMPLATE.format(**asdict(knobs))
    values = asdict(knobs)
    assignments = "".join(f"{name} = {values[name.lower()]!r}\n" for name in (*KNOB_NAMES, *OPTIMIZER_KNOB_NAMES))
    return OPTIMIZER_HEAD + assignments + OPTIMIZER_CODE


def read_knobs(source: str) -> Knobs | None:
    """The knobs of a template-rendered harness, or None for any other harness (a harness
    rendered before the optimizer knobs existed reads back with their defaults)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names = (*KNOB_NAMES, *OPTIMIZER_KNOB_NAMES)
    values: dict[str, object] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id in names):
            try:
                values[node.targets[0].id.lower()] = ast.literal_eval(node.value)
            except ValueError:
                return None
    if not {name.lower() for name in KNOB_NAMES} <= set(values):
        return None
    defaults = {f.name: f.default for f in fields(Knobs)}
    if not all(_fits(value, defaults[name]) for name, value in values.items()):
        return None
    return Knobs(**values)  # type: ignore[arg-type]


def _fits(value: object, default: object) -> bool:
    """Whether a knob's value has its default's type (an int will do for a float)."""
    if isinstance(value, bool):
        return False
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))
