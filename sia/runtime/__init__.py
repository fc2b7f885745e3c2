"""The shell: the loop that folds, decides, runs effect handlers and appends (`loop`), the
composition of handlers for a run (`wiring`), replay, rejudging and failure injection."""
