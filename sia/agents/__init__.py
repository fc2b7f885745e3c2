"""The loop's agents: Meta and Feedback (LLM-backed or the built-in policy)."""
