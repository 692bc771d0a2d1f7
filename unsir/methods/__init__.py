"""Unlearning methods behind one interface. Every module in this package is imported, so that
its ``@register`` decorators run: adding a method is adding a module."""

import importlib
import pkgutil

from unsir.methods.base import (
    METHODS,
    UnlearningMethod,
    UnlearningResult,
    UnlearningTask,
    make_method,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "UnlearningMethod", "UnlearningResult", "UnlearningTask", "make_method"]
