"""Target model backends: the model the harness runs, reached only through the gateway."""
