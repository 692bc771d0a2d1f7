"""Errors raised by the unlearning library.

Every check on user input raises :class:`UnlearningInputError` before any compute starts,
with a message naming the bad value and what was expected.
"""


class UnlearningInputError(ValueError):
    """A caller passed something the library cannot work with (bad class, shape, subset...)."""
