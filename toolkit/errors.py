"""Errors a user can act on: the CLI prints their message and exits 2, without a traceback."""

from toolkit.jsonl import DataError
from toolkit.recipe import RecipeError


class ModelError(RuntimeError):
    """A model that cannot be found, fetched or trusted; the message says what to do."""


class StageError(RuntimeError):
    """A stage that could not finish (an external command failed, an endpoint is unreachable)."""


# Only errors raised on purpose, with a message for the user: anything else (a KeyError, an AttributeError) is
# a bug in xtk and shows its traceback.
USER_ERRORS = (RecipeError, DataError, ModelError, StageError)
