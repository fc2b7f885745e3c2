"""Harness generated from sia's template; the knobs below are what the built-in
Feedback policy edits. Contract: solve(sample, model) -> str."""

PROMPT = 'bare'
EXTRACT = 'raw'
SAMPLES = 1
TEMPERATURE = 1.0
MAX_TOKENS = 4
FALLBACK = 'none'


def build_prompt(sample):
    fields = {k: v for k, v in sample.items() if k not in ("id", "options")}
    if PROMPT == "bare":
        return str(fields.get("question") or next(iter(fields.values()), ""))
    lines = [f"{key}: {value}" for key, value in fields.items()]
    if sample.get("options"):
        lines.append("options: " + ", ".join(sample["options"]))
    lines.append("answer:")
    return "\n".join(lines)


def extract(text, options):
    text = text.strip()
    if EXTRACT == "raw":
        return text or None
    if EXTRACT == "first_line":
        return text.splitlines()[0].strip() if text else None
    words = [w.strip(".,;:!?\"'").lower() for w in text.split()]
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
