"""`xtk recipe keys`: every key a recipe may set, listed from the typed model itself (Recipe and its sections in
toolkit/task/schema.py), so the listing cannot drift from what a recipe is checked against."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from toolkit.task.recipe import Recipe
from toolkit.task.schema import CodeRef


@dataclass(frozen=True)
class Key:
    """One recipe key as `xtk recipe keys` prints it."""
    path: str  # dotted, as overrides name it: train.lora_rank, fields.0.name
    type: str
    default: str  # "required", or the default as JSON
    description: str
    value: str | None = None  # as JSON, when a recipe was given


def recipe_keys(recipe: Recipe | None = None) -> list[Key]:
    """Every key a recipe may set, where it is declared: its type, default and description, and its value in
    `recipe` when one is given. A list of sections (fields) is listed for each of its items in the recipe, else
    once as `fields.*`. root and profile are set by xtk, not by the file."""
    out: list[Key] = []

    def walk(model: type[BaseModel], prefix: str, obj: BaseModel | None) -> None:
        for name, info in model.model_fields.items():
            if model is Recipe and name in ("root", "profile"):
                continue
            path, value = prefix + name, getattr(obj, name) if obj is not None else None
            section, many = _section(info.annotation)
            shown = None if obj is None or section else json.dumps(
                value, ensure_ascii=False, default=str)
            default = "required" if info.is_required() else json.dumps(
                info.get_default(call_default_factory=True), ensure_ascii=False, default=str)
            kind_ = _type_name(info.annotation) + "".join(
                f" {op} {getattr(m, attr)}" for m in info.metadata
                for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if hasattr(m, attr))
            out.append(Key(path, kind_, "—" if section else default, info.description or "", shown))
            if section and many:
                for i, item in enumerate(value) if obj is not None else [("*", None)]:
                    walk(section, f"{path}.{i}.", item)
            elif section:
                walk(section, path + ".", value)

    walk(Recipe, "", recipe)
    return out


def _section(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model a key's value is, whether a list of them) for a section key; (None, False) for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = get_args(annotation)
    if get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    return None, False


def _type_name(annotation: Any) -> str:
    """A key's type as a reader writes it: `int | null`, `lora | full`, `list[str]`, `module:function`."""
    if annotation is type(None):
        return "null"
    if annotation == CodeRef:
        return "module:function"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (Union, UnionType):
        return " | ".join(map(_type_name, args))
    if origin is Annotated:
        return _type_name(args[0])
    if origin is not None:
        return f"{origin.__name__}[{', '.join(map(_type_name, args))}]"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)
