"""The error every refused admin request raises."""

from __future__ import annotations


class AdminError(ValueError):
    """An operator request that cannot be carried out; ``hint`` says what to do instead."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
