"""The recipe reference in the README, generated from the schema so the two cannot drift.

`python -m launcher.recipe.reference` prints it; a test checks the README holds exactly this text.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from launcher.recipe.schema import Recipe

BEGIN = "<!-- recipe-reference:begin (generated: python -m launcher.recipe.reference) -->"
END = "<!-- recipe-reference:end -->"


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names) + (" \\| null" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    if isinstance(field.json_schema_extra, dict) and "required_without" in field.json_schema_extra:
        return f"**required** without `{field.json_schema_extra['required_without']}`"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return ""
    return "null" if value is None else f"`{value}`"


def reference() -> str:
    lines = [BEGIN]
    sections: list[tuple[str, type[BaseModel]]] = [("(top level)", Recipe)]
    for name, field in Recipe.model_fields.items():
        inner = [a for a in (field.annotation, *typing.get_args(field.annotation)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if inner:
            sections.append((name, inner[0]))
    cluster = Recipe.model_fields["cluster"].annotation
    for name in ("container", "tpu"):
        sections.append((f"cluster.{name}", cluster.model_fields[name].annotation.__args__[0]))
    for title, model in sections:
        lines += ["", f"**{title}**", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            lines.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {field.description or ''} |")
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference())
