"""What to say about a field a request has no place for: the name it likely meant at that level (`epoch` →
`epochs`), or else where that field does belong (`lr` → `optimizer.lr`; `momentum` → optimizer kinds sgd, rmsprop).
Pure pydantic introspection, so that the hint follows the spec classes as they change."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, get_args, get_origin

from pydantic import BaseModel

MAX_DEPTH = 8  # deeper than any spec; a guard against a model that contains itself
# Names other libraries give a field, which no spelling distance finds: Keras' and Hugging Face's learning rate.
SYNONYMS = {"learning_rate": "lr"}


def message_with_hint(root: type[BaseModel], error: Mapping[str, Any], loc: Sequence[str | int]) -> str:
    """A pydantic error's message, with the hint after it where the error is an unknown field at `loc` in `root`."""
    hint = unknown_field_hint(root, loc) if error.get("type") == "extra_forbidden" else None
    return f"{error['msg']}: {hint}" if hint else error["msg"]


def unknown_field_hint(root: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """`loc`: the unknown field's path in `root` as pydantic gives it (union tags included, "body" left out)."""
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


def _models(annotation: object) -> list[type[BaseModel]]:
    """The models a field can hold, through Optional, unions, lists and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models(arg)]


def _is_list(annotation: object) -> bool:
    return get_origin(annotation) is list or any(_is_list(arg) for arg in get_args(annotation))


def _kind(model: type[BaseModel]) -> str | None:
    """A union member's tag: its `kind` default (the discriminator of every spec union)."""
    field = model.model_fields.get("kind")
    return field.default if field is not None and isinstance(field.default, str) else None


def _model_at(root: type[BaseModel], parents: Sequence[str | int]) -> type[BaseModel] | None:
    candidates = [root]
    for part in parents:
        if isinstance(part, int):  # a list index: the items are the models found already
            continue
        tagged = [model for model in candidates if _kind(model) == part]
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
            if some_kinds and (kind := _kind(model)) is not None:
                kinds.append(kind)
            members = _models(info.annotation)
            for member in members:
                walk(member, f"{path}[i]." if _is_list(info.annotation) else f"{path}.", members, depth + 1)

    walk(root, "", [root], 0)
    return found
