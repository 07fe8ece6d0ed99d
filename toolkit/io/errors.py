"""Errors a user can act on: the CLI prints their message and exits 2 (3: Unanswered), without a traceback."""

from pathlib import Path


class DataError(ValueError):
    """Bad input data; the message names the file, the line and what was expected."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line = Path(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


class RecipeError(ValueError):
    """A recipe that cannot be used; the message says where and why."""


class ModelError(RuntimeError):
    """A model that cannot be found, fetched or trusted; the message says what to do."""


class StageError(RuntimeError):
    """A stage that could not finish (an external command failed, an endpoint is unreachable)."""


class Unanswered(StageError):
    """An endpoint that had answered stopped answering (time-outs, refused connections in a row), or left requests
    unanswered after their retries: what was answered is kept and the same command asks the rest. Exit 3, not 2:
    nothing the user gave is wrong, the work is unfinished."""


# Only errors raised on purpose, with a message for the user: anything else (a KeyError, an AttributeError) is
# a bug in xtk and shows its traceback.
USER_ERRORS = (RecipeError, DataError, ModelError, StageError)
