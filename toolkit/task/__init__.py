# Registers the built-in field types, so that every FieldSpec, wherever it is imported from, is checked against
# them (they import fields, so fields cannot register them itself).
from toolkit.task import builtin_types, money, nested  # noqa: F401
