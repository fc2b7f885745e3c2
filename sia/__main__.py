from sia.interface.cli import entrypoint

entrypoint()
