from sia.cli import entrypoint

entrypoint()
