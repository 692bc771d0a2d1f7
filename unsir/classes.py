"""Which classes a forget set names: names or indices resolved, and the set checked.

Plain Python, no tensor library: the command line checks a deletion request with these before
anything heavier starts.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from unsir.errors import UnlearningInputError


def resolve_classes(requested: Sequence[int | str], class_names: tuple[str, ...]) -> tuple[int, ...]:
    """Turn class names or indices into sorted, unique class indices, or fail naming the bad one."""
    indices: set[int] = set()
    for item in requested:
        named = _named(item, class_names) if isinstance(item, str) else None
        if named is not None:
            indices.add(named)
            continue
        try:
            # An index is written in ASCII digits: int() also takes "-0", " 3", "1_0" and "٣".
            if isinstance(item, str) and not (item.isascii() and item.isdigit()):
                raise ValueError(item)
            index = int(item)
        except (TypeError, ValueError):
            raise UnlearningInputError(
                f"unknown class {item!r}; expected an index in [0, {len(class_names) - 1}] "
                f"or one of {list(class_names)}"
            ) from None
        if not 0 <= index < len(class_names):
            raise UnlearningInputError(
                f"unknown class {item!r}; expected an index in [0, {len(class_names) - 1}] "
                f"or one of {list(class_names)}"
            )
        indices.add(index)
    return tuple(sorted(indices))


def _named(item: str, class_names: tuple[str, ...]) -> int | None:
    """The index of the class named ``item``. A folder name copied from macOS is in Unicode's
    decomposed form (NFD: "e" + combining accent) and a typed one in the composed form (NFC):
    the same word to a reader, so compared in one form when no name matches exactly."""
    if item in class_names:
        return class_names.index(item)
    wanted = unicodedata.normalize("NFC", item)
    matches = [i for i, name in enumerate(class_names) if unicodedata.normalize("NFC", name) == wanted]
    return matches[0] if len(matches) == 1 else None


def check_forget_classes(
    forget_classes: Sequence[int], num_classes: int, class_names: Sequence[str] | None = None
) -> tuple[int, ...]:
    """Forget classes must be a collection of known class indices that leaves at least one class
    to retain; returns them as a tuple of ints. With ``class_names`` (one per class) the refusal
    names the classes as a person calls them, not by index."""
    # A bare index (3 for (3,)) or text would otherwise fail as "'int' object is not iterable",
    # and a NumPy array as "the truth value of an array ... is ambiguous".
    if (
        isinstance(forget_classes, (int, np.integer, str, bytes))
        or not isinstance(forget_classes, Iterable)
        or (isinstance(forget_classes, np.ndarray) and forget_classes.ndim != 1)
    ):
        raise UnlearningInputError(
            f"forget classes must be a collection of class indices, e.g. (3,) or (3, 5); got {forget_classes!r}"
        )
    classes = tuple(forget_classes)
    if not classes:
        raise UnlearningInputError("no forget class given; expected at least one class index")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < num_classes:
            raise UnlearningInputError(f"unknown forget class {c!r}; expected an index in [0, {num_classes - 1}]")
    if len(set(classes)) >= num_classes:
        named = [class_names[c] for c in sorted(set(classes))] if class_names is not None else sorted(set(classes))
        raise UnlearningInputError(
            f"forgetting classes {named} would forget every one of the "
            f"{num_classes} classes; at least one class must be retained"
        )
    return tuple(int(c) for c in classes)
