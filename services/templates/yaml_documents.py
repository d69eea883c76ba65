"""Templates as YAML documents: GET /templates/<id>/export writes one, POST /templates/import
reads one back.

A document holds what POST /templates takes — name, description, tags (when any), steps (id,
model, prompt, parameters, output_schema) — with every prompt as a block scalar, so it reads and diffs as
the text it is. Writing then reading gives back the same values (a prompt that a block
scalar cannot hold exactly, such as one with trailing spaces, is written double-quoted).

Reading is PyYAML's safe loader, tightened: no aliases (so no "billion laughs"), nesting
at most `MAX_DEPTH` deep, at most `MAX_DOCUMENT_BYTES`, one document, a mapping at the
top, no key twice in a mapping, and only values JSON has (no timestamps, binary, sets or
non-string keys), since the definition is recorded as JSON. Plain scalars are typed by the
YAML 1.2 core schema, not PyYAML's YAML 1.1: `1:30`, `yes`, `1_000` and `017`'s octal
reading are gone (strings, or decimal 17); `0x10` and `0o17` are hex and octal ints as
1.2 says. Writing quotes any string either schema would read as something else. Each
refusal is an UnreadableDocument naming where.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode

from services.templates.domain import TemplateVersion

MAX_DOCUMENT_BYTES = 256 * 1024
"""A template is recorded as one event of at most 256 KiB; no larger document could be."""
MAX_DEPTH = 32
MEDIA_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
"""What POST /templates/import takes; export answers the first."""


class UnreadableDocument(ValueError):
    """A document that is not a template's YAML; `where` is a line:column or a field path."""

    def __init__(self, message: str, where: str = "") -> None:
        self.where = where
        super().__init__(f"{message} (at {where})" if where else message)


# -- the YAML 1.2 core schema ---------------------------------------------------------------

_CORE_SCHEMA: list[tuple[str, re.Pattern[str], list[str]]] = [
    ("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    ("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+.0123456789"),
    ),
]
"""(tag, pattern, first characters; "" the empty scalar) of each plain scalar that is not a string, as YAML 1.2's
core schema resolves it (https://yaml.org/spec/1.2.2/#1032-tag-resolution)."""


# -- writing -----------------------------------------------------------------------------


class _Prompt(str):
    """A prompt, written as a block scalar."""


class _TemplateDumper(yaml.SafeDumper):
    """Writes a value met twice (a parameters dict two steps share) twice: never an alias,
    which reading refuses."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _prompt_as_block(dumper: yaml.SafeDumper, text: _Prompt) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(text), style="|")


_TemplateDumper.add_representer(_Prompt, _prompt_as_block)
for _tag, _pattern, _first in _CORE_SCHEMA:  # also quote what the reader's 1.2 schema would type
    _TemplateDumper.add_implicit_resolver(_tag, _pattern, _first)


def export_document(template_id: str, version: TemplateVersion) -> str:
    """One version of a template as a YAML document, under a comment saying which."""
    steps = []
    for step in version.steps:
        written: dict[str, Any] = {"id": step.id, "model": step.model, "prompt": _Prompt(step.prompt)}
        if step.parameters:
            written["parameters"] = step.parameters
        if step.output_schema is not None:
            written["output_schema"] = step.output_schema
        steps.append(written)
    document: dict[str, Any] = {"name": version.name, "description": version.description}
    if version.tags:
        document["tags"] = list(version.tags)
    document["steps"] = steps
    body = yaml.dump(document, Dumper=_TemplateDumper, sort_keys=False, allow_unicode=True, width=1_000_000)
    return f"# Palette template {template_id}, version {version.version}\n{body}"


# -- reading -----------------------------------------------------------------------------


class _TemplateLoader(yaml.SafeLoader):
    """The safe loader without aliases or repeated keys, with a depth limit (the composer
    recurses), typing plain scalars by the YAML 1.2 core schema."""

    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode):
                key = self.construct_object(key_node)
                if key in seen:
                    raise UnreadableDocument(f"the key {key!r} appears twice", _line_column(key_node.start_mark))
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        """1.2's ints: decimal (leading zeros too), 0o octal, 0x hex."""
        text = str(self.construct_scalar(node))
        for prefix, base in (("0o", 8), ("0x", 16)):
            if text.startswith(prefix):
                return int(text[2:], base)
        return int(text, 10)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            raise UnreadableDocument("aliases (*name) are not accepted", _line_column(mark))
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise UnreadableDocument(f"the document nests more than {MAX_DEPTH} deep", _line_column(None, self))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


for _tag, _pattern, _first in _CORE_SCHEMA:
    _TemplateLoader.add_implicit_resolver(_tag, _pattern, _first)
_TemplateLoader.add_constructor("tag:yaml.org,2002:int", _TemplateLoader.construct_yaml_int)


def read_document(text: str) -> dict[str, Any]:
    """The mapping a template document holds; raises UnreadableDocument."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise UnreadableDocument(f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    loader: _TemplateLoader | None = None
    try:
        loader = _TemplateLoader(text)  # the reader checks every character here already
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        where = _line_column(error.problem_mark) if error.problem_mark else ""
        raise UnreadableDocument(f"not valid YAML: {error.problem or error.context}", where) from None
    except yaml.reader.ReaderError as error:  # a control character: the reader gives an offset, not a mark
        line, column = text.count("\n", 0, error.position) + 1, error.position - text.rfind("\n", 0, error.position)
        raise UnreadableDocument(
            f"not valid YAML: the control character U+{error.character:04X} is not allowed",
            f"line {line}, column {column}",
        ) from None
    except yaml.YAMLError as error:
        raise UnreadableDocument(f"not valid YAML: {error}") from None
    except UnreadableDocument:
        raise
    except (ValueError, OverflowError, LookupError, AttributeError) as error:
        # a scalar its type cannot hold: an int of 5,000 digits, `!!bool maybe`, `!!float ''`, `!!timestamp x`
        raise UnreadableDocument(f"a value cannot be read: {error}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise UnreadableDocument("the document must be a mapping (name, description, steps)")
    _require_json(data, "")
    return data


def _require_json(value: Any, path: str) -> None:
    """Refuses what JSON cannot hold, naming the first such field."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnreadableDocument(f"keys must be strings, not {type(key).__name__}", path or "top level")
            _require_json(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _require_json(item, f"{path}.{index}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise UnreadableDocument("numbers must be finite", path)
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise UnreadableDocument(f"a {type(value).__name__} is not a JSON value (quote it)", path)


def _line_column(mark: yaml.Mark | None, loader: yaml.SafeLoader | None = None) -> str:
    if mark is None and loader is not None:
        mark = loader.peek_event().start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
