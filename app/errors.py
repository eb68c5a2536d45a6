"""Errors users can cause. Each carries the cause and what to do about it, so the CLI
and UI can show one clear message instead of a traceback."""

from __future__ import annotations


class TomesError(Exception):
    def __init__(self, cause: str, fix: str | None = None) -> None:
        self.cause = cause
        self.fix = fix
        super().__init__(f"{cause}. {fix}" if fix else cause)


class NotFound(TomesError):
    pass


class IngestError(TomesError):
    """A file that cannot be ingested; ``path`` names it."""

    def __init__(self, path: str, cause: str, fix: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {cause}", fix)
