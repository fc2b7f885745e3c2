"""Effect handlers: LLM calls, harness episodes, evaluation, training."""
