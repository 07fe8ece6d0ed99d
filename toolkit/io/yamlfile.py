"""YAML files a person writes (recipes, bake-off specs): read strictly (a key given twice is refused, aliases may
not expand past a bound), with the line of every key, so that an error names the file, the key, its line and what
was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from toolkit.io.errors import DataError, RecipeError
from toolkit.io.jsonl import read_text


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        self.line = line
        self.problem = f"duplicate key {key!r} (first given on line {first}): give each key once"
        super().__init__(f"line {line}: {self.problem}")


# The most values a document may hold once its aliases are expanded. A recipe holds a few hundred; nested anchors
# (`b: &b [*a, *a, ...]`, each level ten times the last) reach billions in a few lines, and PyYAML builds every one.
MAX_VALUES = 100_000


class _TooLarge(yaml.YAMLError):
    def __init__(self, line: int, recursive: bool = False):
        self.line = line
        self.problem = "an alias inside its own anchor: it would expand for ever" if recursive else (
            f"its aliases expand to more than {MAX_VALUES:,} values (anchors nested in anchors): write the values "
            "out, or repeat fewer")
        super().__init__(f"line {line}: {self.problem}")


def _check_expansion(root: yaml.Node) -> None:
    """Count the values `root` holds with every alias expanded, each shared node counted once per use but walked
    once; _TooLarge at the smallest value past the bound (or at an alias inside its own anchor)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] < 0:  # still being counted: an anchor that contains itself
                raise _TooLarge(node.start_mark.line + 1, recursive=True)
            return sizes[id(node)]
        sizes[id(node)] = -1
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        total = 1 + sum(size(child) for child in children)
        if total > MAX_VALUES:
            raise _TooLarge(node.start_mark.line + 1)
        sizes[id(node)] = total
        return total

    size(root)


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, where PyYAML silently keeps the last, and a
    document whose aliases expand past MAX_VALUES, before it builds any of it."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may be overridden by design
                    continue
                if isinstance(key_node, yaml.ScalarNode):  # a complex key is refused by PyYAML anyway
                    key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                    if key in first:
                        raise _DuplicateKey(key, line, first[key])
                    first[key] = line
        return super().construct_mapping(node, deep)


def key_lines(text: str) -> dict[tuple, int]:
    """Line number (1-based) of every mapping key in a YAML file, by its key path."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = prefix + (k.value,)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[prefix + (i,)] = v.start_mark.line + 1
                walk(v, prefix + (i,))

    root = yaml.compose(text, Loader=UniqueKeyLoader)
    if root is not None:
        walk(root, ())
    return lines


EXPECTED = {
    "extra_forbidden": "unknown key (misspelt?)",
    "missing": "required key is missing",
}


def describe(err: dict) -> str:
    if err["type"] in EXPECTED:
        return EXPECTED[err["type"]]
    expected = f"expected {err['msg'].removeprefix('Input should be ').removeprefix('Value error, ')}"
    # A whole section as the input (from a check across its keys) would bury the message.
    return expected if isinstance(err.get("input"), dict) else f"{expected}, got {err.get('input')!r}"


def read_yaml_mapping(path: Path, what: str, expected: str, error: type[RecipeError]) -> tuple[str, dict]:
    """A YAML file's text and its top-level mapping. Every way it can be unusable (missing, a directory,
    unreadable, not UTF-8, a duplicate key, not YAML, not a mapping) is an `error` naming the file (and line)."""
    if not path.exists():
        raise error(f"{path}: no such {what}")
    try:
        text = read_text(path, f"a {what} (YAML)")
        raw = yaml.load(text, Loader=UniqueKeyLoader)
    except DataError as exc:
        raise error(str(exc)) from None
    except (_DuplicateKey, _TooLarge) as exc:
        raise error(f"{path}:{exc.line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected {expected}, got {type(raw).__name__}")
    return text, raw
