"""Command-line options declared once: a settings dataclass's field docstrings are their help.

A settings dataclass documents each field with an attribute docstring right under it (as
CleanRL's configs do)::

    @dataclass(frozen=True)
    class TrainSpec:
        steps: int = 1_000_000
        \"\"\"Total agent env steps.\"\"\"

:func:`field_docs` reads those docstrings (Python keeps none at run time, so from the class's
source); :func:`add_field_options` turns every field into a ``--flag`` whose help is that text;
:func:`from_options` builds the dataclass back from the parsed namespace.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

__all__ = ["add_field_options", "field_docs", "from_options", "json_option"]

T = TypeVar("T")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass whose fields carry attribute docstrings.

    Whitespace is collapsed to single spaces. Fields without a docstring are left out.

    Raises:
        TypeError: ``cls`` is not a dataclass.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"field_docs needs a dataclass, got {cls!r}")
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def json_option(text: str) -> Any:
    """argparse ``type=`` for JSON values: a syntax error names its position in one line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"not valid JSON: {exc.msg} at column {exc.colno} of {text!r} (quote the whole value "
            """in single quotes and keys in double quotes: '{"key": 1}')"""
        ) from None


json_option.__name__ = "JSON"  # argparse names the type in its messages


def _option_type(annotation: Any) -> tuple[Any, str]:
    """``(argparse type, kind)`` of a field annotation: ``X | None`` parses as ``X``.

    ``kind`` is ``"bool"`` (``--x / --no-x``), ``"append"`` (a repeatable option for a
    ``tuple[str, ...]``) or ``"value"``.
    """
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    origin = typing.get_origin(annotation) or annotation
    if origin is bool:
        return None, "bool"
    if origin in (dict, Mapping):
        return json_option, "value"
    if _is_str_tuple(annotation):
        return str, "append"
    if origin in (int, float, str):
        return origin, "value"
    raise TypeError(f"no command-line option for fields of type {annotation!r}")


def add_field_options(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Any = None,
    skip: Collection[str] = (),
    flags: Mapping[str, str] | None = None,
) -> None:
    """Add ``--field-name`` for every field of dataclass ``cls``, with its docstring as help.

    ``bool`` fields become ``--x / --no-x``; ``dict`` fields take JSON; ``tuple[str, ...]``
    fields a repeatable option; ``X | None`` fields take an ``X``.

    Args:
        parser: where the options go.
        cls: the settings dataclass (fields documented as in the module docstring).
        defaults: an instance whose values are the defaults (else the fields' own defaults).
        skip: fields that get no option.
        flags: ``{field: flag}`` for options not spelled ``--field-name`` (e.g. ``--import``).

    Raises:
        ValueError: a field has no docstring (its option would have no help).
        TypeError: a field type with no command-line form (e.g. a tuple).
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        if field.name not in docs:
            raise ValueError(
                f"{cls.__name__}.{field.name} has no docstring: write one under the field; it is "
                "the option's help"
            )
        default = _default(field) if defaults is None else getattr(defaults, field.name)
        kind, form = _option_type(hints[field.name])
        shown = json.dumps(default) if isinstance(default, Mapping) else default
        shown = "''" if shown == "" else "none" if shown == () else shown
        options: dict[str, Any] = {
            "default": default,
            "help": f"{docs[field.name]} (default: {shown})",
            "dest": field.name,
        }
        if form == "bool":
            options["action"] = argparse.BooleanOptionalAction
        elif form == "append":
            options.update(action="append", type=kind, default=None, metavar="MODULE")
        else:
            options["type"] = kind
        flag = (flags or {}).get(field.name, f"--{field.name.replace('_', '-')}")
        parser.add_argument(flag, **options)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def from_options(cls: type[T], namespace: argparse.Namespace, **values: Any) -> T:
    """``cls(**fields)`` from options added by :func:`add_field_options`; ``values`` win."""
    parsed = {k: v for k, v in vars(namespace).items() if v is not None or k not in _appended(cls)}
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{**{n: parsed[n] for n in names if n in parsed}, **values})


def _appended(cls: type) -> set[str]:
    """Fields of ``cls`` given as repeatable options (None when never given: the default)."""
    hints = typing.get_type_hints(cls)
    return {name for name, hint in hints.items() if _is_str_tuple(hint)}


def _is_str_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, Ellipsis)
