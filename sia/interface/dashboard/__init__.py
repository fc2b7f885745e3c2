"""`sia serve`: a local web dashboard over the event log.

Read-only by construction: every page is a read model of the store (through its public
read methods) or of a fold. The only writes are the actions (fork, pause), which exist
only when the server was started with `--allow-actions` and go through the same code
paths as the CLI commands.
"""
