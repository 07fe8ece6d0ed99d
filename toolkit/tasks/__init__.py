"""Task-specific code, one package a shipped recipe (toolkit/tasks/<recipe name>/): the data generator
(`generate.py`, named by the recipe's data.generator), and any rule baseline (named by its baseline
key). The rest of toolkit knows no task: it reaches this code only through the names a recipe gives."""
