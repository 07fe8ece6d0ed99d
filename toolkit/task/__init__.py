# Registers the built-in field types, so that every FieldSpec, wherever it is imported from, is checked against
# them (builtin_types imports fields, so fields cannot register them itself).
from toolkit.task import builtin_types  # noqa: F401
