"""sia: a self-improving agent loop recorded as an event-sourced state machine."""

__version__ = "0.1.0"
