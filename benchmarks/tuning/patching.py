"""Tuning experiments that change one step of UNSIR without changing the library.

``with_replaced_step`` returns the method with one function of ``unsir.methods.unsir``
(``prepare``, ``fit``, ``reset_head_rows``) replaced for the duration of each of its runs; the
replacement is built per run from the model and task it is given, so it can read them.
"""

from __future__ import annotations

import unsir.methods.unsir as unsir_method


def with_replaced_step(method, function_name: str, replacement_for):
    """``method``, whose runs see ``unsir.methods.unsir.<function_name>`` replaced by
    ``replacement_for(model, task, original_function, device)``."""
    plain_unlearn = method._unlearn

    def _unlearn(model, task, *, device, generator):
        original = getattr(unsir_method, function_name)
        setattr(unsir_method, function_name, replacement_for(model, task, original, device))
        try:
            return plain_unlearn(model, task, device=device, generator=generator)
        finally:
            setattr(unsir_method, function_name, original)

    method._unlearn = _unlearn
    return method
