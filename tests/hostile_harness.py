"""Pieces of hostile harness source: the first disarms the runner's audit hook, so the
attacks after it test the OS boundary itself, as a harness that found a way around the
hook would (PEP 578: an audit hook is no security boundary)."""

from __future__ import annotations

DISARM = '''
import gc as _gc


def _disarm():
    for hook in _gc.get_objects():
        if getattr(hook, "__name__", None) != "hook" or not getattr(hook, "__closure__", None):
            continue
        names = hook.__code__.co_freevars
        namespace = {}
        exec("def outer():\\n    " + "; ".join(f"{n} = None" for n in names)
             + "\\n    def hook(event, args):\\n        return (" + ", ".join(names)
             + ",)\\n    return hook", namespace)
        hook.__code__ = namespace["outer"]().__code__.replace(co_consts=(None,))
        return True
    return False


DISARMED = _disarm()
'''
"""Source that replaces the runner's audit hook's code with one that allows everything."""
