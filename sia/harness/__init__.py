"""Running harness code: the contract, the sandboxed runner, the outcome of an episode."""
