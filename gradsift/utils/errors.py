"""gradsift's exception types: every user-facing failure is one of these, with a message that says
what to fix (the file, the line, the field that differs)."""

from __future__ import annotations

from pathlib import Path


class GradsiftError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class DataError(GradsiftError):
    """A malformed record, named by file and line."""

    def __init__(self, path: Path | str, line: int, problem: str):
        self.path, self.line, self.problem = Path(path), line, problem
        super().__init__(f"{path}:{line}: {problem}" if line > 0 else f"{path}: {problem}")


class ConfigError(GradsiftError):
    """A configuration value or file that cannot be used."""


class StoreMismatchError(GradsiftError):
    """Two gradient stores (or a store and a run) that must not be compared."""
