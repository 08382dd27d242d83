"""What to say beside pydantic's message where a request's spec is close to right:
- a field it has no place for: the name it likely meant at that level (`epoch` → `epochs`), or else where that field
  does belong (`lr` → `optimizer.lr`; `momentum` → optimizer kinds sgd, rmsprop);
- a section written as a bare value, or left out: the object it takes (`"loss": "mse"` → `{"kind": "mse"}`); a list
  written as its one item: the list;
- a kind or choice spelt differently: the one it likely meant (`"CNN"` → `'cnn'`).
Pure pydantic introspection, so that the hints follow the spec classes as they change."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

MAX_DEPTH = 8  # deeper than any spec; a guard against a model that contains itself
# Names other libraries give a field, which no spelling distance finds: Keras' and Hugging Face's learning rate.
SYNONYMS = {"learning_rate": "lr"}
MAX_ECHO = 120  # the longest value a hint writes back
# pydantic's error types for a section given as something other than an object, and for one left out.
NOT_AN_OBJECT = {"model_type", "model_attributes_type"}
LEFT_OUT = {"missing", "union_tag_not_found"}


def message_with_hint(root: type[BaseModel], error: Mapping[str, Any], loc: Sequence[str | int]) -> str:
    """A pydantic error's message, with a hint after it where there is one. `loc`: the error's path in `root` as
    pydantic gives it (union tags included, "body" left out)."""
    kind, value = error.get("type"), error.get("input")
    if kind == "extra_forbidden":
        hint = unknown_field_hint(root, loc)
    elif kind in NOT_AN_OBJECT:
        hint = section_hint(root, loc, value)
    elif kind in LEFT_OUT:
        hint = section_hint(root, loc)
    elif kind == "list_type":
        hint = list_hint(root, loc, value)
    elif kind == "union_tag_invalid":
        hint = choice_hint(root, loc, (error.get("ctx") or {}).get("tag"))
    elif kind == "literal_error":
        hint = choice_hint(root, loc, value)
    else:
        hint = None
    return f"{error['msg']}: {hint}" if hint else error["msg"]


def unknown_field_hint(root: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """`loc`: the unknown field's path."""
    if not loc or not isinstance(loc[-1], str):
        return None
    *parents, field = loc
    model = _model_at(root, parents)
    meant = SYNONYMS.get(field, field)
    if model is not None:
        if field in model.model_fields:
            return None
        close = [meant] if meant in model.model_fields else []
        close = close or difflib.get_close_matches(field, list(model.model_fields), n=2, cutoff=0.6)
        if close:
            return f"did you mean {' or '.join(map(repr, close))}?"
    places = _fields_by_name(root).get(meant, {})
    if not places:
        return None
    where = [f"{path} (with kind {', '.join(kinds)})" if kinds else path for path, kinds in places.items()]
    return f"{field!r} is set as {' or '.join(where)}"


def section_hint(root: type[BaseModel], loc: Sequence[str | int], value: object = None) -> str | None:
    """The object a section at `loc` takes, where it was `value` (a kind or name fills it in) or left out (None)."""
    field = _field_at(root, loc)
    if field is None or (value is None and _is_list(field.annotation)):
        return None
    written = _section_object(root, loc, value)
    return f"{'give' if value is None else 'write it as'} {written[0]}{written[1]}" if written else None


def list_hint(root: type[BaseModel], loc: Sequence[str | int], value: object) -> str | None:
    """A list at `loc` given one item: the list of it (`"augment": "hflip"` → `[{"kind": "hflip"}]`; `"hidden": 128`
    → `[128]`). A string only as a section's kind or name: "32,64" is no item of a list of numbers."""
    field = _field_at(root, loc) if loc and isinstance(loc[-1], str) else None  # the list itself, not an item
    if field is None or not _is_list(field.annotation) or any(map(_is_list, _list_items(field.annotation))):
        return None  # a list of lists (`rows`): one more level than one item would need
    if isinstance(value, str):
        written = _section_object(root, loc, value)
        return f"write it as [{written[0]}]{written[1]}" if written else None
    if isinstance(value, dict | int | float) and not isinstance(value, bool):
        items = json.dumps([value])
        return f"write it as {items}" if len(items) <= MAX_ECHO else None
    return None


def _section_object(root: type[BaseModel], loc: Sequence[str | int], value: object) -> tuple[str, str] | None:
    """The object a section at `loc` takes as JSON, filled in from `value` where that names a kind or name, and
    what to say after it (the kinds to choose from, where none was named)."""
    shape = section_key(root, loc)
    if shape is None:
        return None
    key, choices = shape
    filled = (_closest(value, choices) if choices else value) if isinstance(value, str) else None
    if filled is not None and len(written := json.dumps({key: filled})) <= MAX_ECHO:
        return written, ""
    return f'{{"{key}": …}}', (f" with {key} one of {', '.join(map(repr, choices))}" if choices else "")


def section_key(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[str, list[str]] | None:
    """The one field that names what a section at `loc` is, and its choices: a union's `kind` and its tags, or a
    section's only required field (a dataset's `name`, no choices known here)."""
    field = _field_at(root, loc)
    members = _models(field.annotation) if field is not None else []
    if kinds := [kind for member in members for kind in _kinds(member)]:
        return "kind", kinds
    required = [name for name, info in members[0].model_fields.items() if info.is_required()] if members else []
    return (required[0], []) if len(members) == 1 and len(required) == 1 else None


def choice_hint(root: type[BaseModel], loc: Sequence[str | int], value: object) -> str | None:
    """The kind or choice a refused `value` at `loc` likely meant: the same letters in another case, or close."""
    field = _field_at(root, loc)
    if field is None or not isinstance(value, str):
        return None
    choices = [kind for member in _models(field.annotation) for kind in _kinds(member)] or _literals(field.annotation)
    meant = _closest(value, choices)
    return f"did you mean {meant!r}?" if meant is not None and meant != value else None


def _closest(value: str, choices: Sequence[str]) -> str | None:
    folded = value.casefold()
    same = [choice for choice in choices if choice.casefold() == folded]
    return (same or difflib.get_close_matches(folded, choices, n=1, cutoff=0.6) or [None])[0]


def _field_at(root: type[BaseModel], loc: Sequence[str | int]) -> FieldInfo | None:
    """The field at `loc`: a list's field for one of its items."""
    path = list(loc)
    while path and isinstance(path[-1], int):
        path.pop()
    if not path or not isinstance(path[-1], str):
        return None
    model = _model_at(root, path[:-1])
    return model.model_fields.get(path[-1]) if model is not None else None


def _literals(annotation: object) -> list[str]:
    """The strings a field can be, through Optional, unions and Annotated."""
    if get_origin(annotation) is Literal:
        return [arg for arg in get_args(annotation) if isinstance(arg, str)]
    return [value for arg in get_args(annotation) for value in _literals(arg)]


def _models(annotation: object) -> list[type[BaseModel]]:
    """The models a field can hold, through Optional, unions, lists and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models(arg)]


def _is_list(annotation: object) -> bool:
    return get_origin(annotation) is list or any(_is_list(arg) for arg in get_args(annotation))


def _list_items(annotation: object) -> list[object]:
    """What the lists a field can be hold, through Optional, unions and Annotated."""
    if get_origin(annotation) is list:
        return list(get_args(annotation))
    return [item for arg in get_args(annotation) for item in _list_items(arg)]


def _kinds(model: type[BaseModel]) -> list[str]:
    """A union member's tags: the values of its `kind` (the discriminator of every spec union)."""
    field = model.model_fields.get("kind")
    return _literals(field.annotation) if field is not None else []


def _model_at(root: type[BaseModel], parents: Sequence[str | int]) -> type[BaseModel] | None:
    candidates = [root]
    for part in parents:
        if isinstance(part, int):  # a list index: the items are the models found already
            continue
        tagged = [model for model in candidates if part in _kinds(model)]
        if len(candidates) > 1 and tagged:  # a union's tag, as pydantic puts it in `loc`
            candidates = tagged
            continue
        fields = [model.model_fields[part] for model in candidates if part in model.model_fields]
        if len(fields) != 1:
            return None
        candidates = _models(fields[0].annotation)
    return candidates[0] if len(candidates) == 1 else None


@cache
def _fields_by_name(root: type[BaseModel]) -> dict[str, dict[str, list[str]]]:
    """Every field name under `root` → its dotted paths → the union kinds that have it (none: every kind)."""
    found: dict[str, dict[str, list[str]]] = {}

    def walk(model: type[BaseModel], prefix: str, union: list[type[BaseModel]], depth: int) -> None:
        for name, info in model.model_fields.items():
            if name == "kind" or depth > MAX_DEPTH:
                continue
            path = f"{prefix}{name}"
            kinds = found.setdefault(name, {}).setdefault(path, [])
            some_kinds = len(union) > 1 and not all(name in member.model_fields for member in union)
            if some_kinds:
                kinds.extend(_kinds(model))
            members = _models(info.annotation)
            for member in members:
                walk(member, f"{path}[i]." if _is_list(info.annotation) else f"{path}.", members, depth + 1)

    walk(root, "", [root], 0)
    return found
