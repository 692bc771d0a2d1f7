"""Errors raised by the unlearning library.

Every check on user input raises :class:`UnlearningInputError` before any compute starts,
with a message naming the bad value and what was expected.
"""

from __future__ import annotations


class UnlearningInputError(ValueError):
    """A caller passed something the library cannot work with (bad class, shape, subset...)."""


class ConfigValueError(UnlearningInputError):
    """A config dataclass holds a value outside what it accepts; ``key`` names the field."""

    def __init__(self, key: str, expected: str, value: object) -> None:
        self.key, self.expected, self.value = key, expected, value
        self.problem = f"must be {expected}, got {value!r}"
        super().__init__(f"{key} {self.problem}")

    def within(self, section: str) -> ConfigValueError:
        """The same error, its key named inside ``section`` (``lr`` in ``unlearn.impair``)."""
        return ConfigValueError(f"{section}.{self.key}", self.expected, self.value)


class TrainingDivergedError(ArithmeticError):
    """A training phase turned the model's weights into inf or NaN (a learning rate too high)."""
