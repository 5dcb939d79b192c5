"""The one YAML loader (rule packs and mailgate.yaml): line numbers for every error, and
refusals for what would silently change a file's meaning or cost without bound.

Built on PyYAML: libyaml (when PyYAML has it) turns the text into events, and the composer
below builds the node graph from them, refusing before any Python object exists:
- a key given twice in one mapping (PyYAML keeps the last one silently),
- aliases that together expand to more than MAX_ALIAS_VALUES values: a "billion laughs"
  document is a few hundred bytes that, once walked, printed or validated, is gigabytes,
- an alias inside the value it names (a structure containing itself), and keys that are not
  plain values,
- nesting deeper than MAX_DEPTH (building objects recurses once per level).
What it builds are LineDict and LineList: a dict and a list that know the line of each key
and item. A value that cannot be built (a date like 2024-13-45, an integer of 5000 digits) is
an error with its line, not a traceback.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    ScalarEvent,
    SequenceEndEvent,
)
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

MAX_ALIAS_VALUES = 10_000  # values that aliases may add to a document, all aliases together
MAX_DEPTH = 64  # nested lists and mappings; rule packs need about ten

KeyPath = tuple[str | int, ...]  # keys and list indexes from the document's root


class LineDict(dict):
    """A mapping that knows the line it starts on and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict[Any, int]


class LineList(list):
    """A list that knows the line it starts on and the line of each item (1-based)."""

    line: int = 0
    item_lines: list[int]


class YamlError(ValueError):
    """A document refused: the message, its 1-based line and the key path when known."""

    def __init__(self, message: str, line: int | None, path: KeyPath = ()) -> None:
        super().__init__(message)
        self.line = line
        self.path = path


def dotted(path: KeyPath) -> str:
    """A key path as an admin reads it: relay.accept_from[1]."""
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return text.lstrip(".")


class _GuardedComposer(Composer):
    """PyYAML's composer, keeping count of what aliases add, the depth and the key path."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: dict[int, int] = {}  # id(node) -> values in it with aliases expanded
        self._through_aliases = 0
        self._path: list[str | int] = []

    def _refuse(self, message: str, mark: Any) -> YamlError:
        return YamlError(message, mark.line + 1 if mark else None, tuple(self._path))

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise self._refuse("an alias inside the value it names (a loop)", mark)
            self._through_aliases += size
            if self._through_aliases > MAX_ALIAS_VALUES:
                raise self._refuse(
                    f"aliases expand to more than {MAX_ALIAS_VALUES} values "
                    "(an alias bomb?); write the values out",
                    mark,
                )
            return node
        if len(self._path) >= MAX_DEPTH:
            raise self._refuse(
                f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        node = super().compose_node(parent, index)
        if isinstance(node, ScalarNode):
            self._sizes[id(node)] = 1
        elif isinstance(node, SequenceNode):
            self._sizes[id(node)] = 1 + sum(self._sizes[id(item)] for item in node.value)
        else:
            self._sizes[id(node)] = 1 + sum(
                self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value
            )
        return node

    def _open(self, kind: type[CollectionNode], anchor: str | None) -> Any:
        """The node a collection's start event opens, as PyYAML's composer makes it."""
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(kind, None, start.implicit)
        node = kind(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        return node

    def compose_sequence_node(self, anchor: str | None) -> SequenceNode:
        node: SequenceNode = self._open(SequenceNode, anchor)
        while not self.check_event(SequenceEndEvent):
            self._path.append(len(node.value))
            node.value.append(self.compose_node(node, len(node.value)))
            self._path.pop()
        node.end_mark = self.get_event().end_mark
        return node

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node: MappingNode = self._open(MappingNode, anchor)
        first_line: dict[tuple[str, str], int] = {}
        while not self.check_event(MappingEndEvent):
            if not self.check_event(ScalarEvent, AliasEvent):
                raise self._refuse(
                    "a key must be a plain value, not a list or a mapping",
                    self.peek_event().start_mark,
                )
            key = self.compose_node(node, None)
            if not isinstance(key, ScalarNode):
                raise self._refuse("a key must be a plain value", key.start_mark)
            self._path.append(key.value)
            if (key.tag, key.value) in first_line:
                first = first_line[key.tag, key.value]
                raise self._refuse(f"duplicate key (first on line {first})", key.start_mark)
            first_line[key.tag, key.value] = key.start_mark.line + 1
            node.value.append((key, self.compose_node(node, key)))
            self._path.pop()
        node.end_mark = self.get_event().end_mark
        return node


class _LineConstructor(SafeConstructor):
    """SafeConstructor building LineDict and LineList; a value it cannot build is an error
    with the value's line."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            reason = str(exc).split(";")[0]  # not Python's advice on raising its limits
            raise ConstructorError(
                None, None, f"cannot read {node.value!r:.40}: {reason}", node.start_mark
            ) from None

    def construct_line_dict(self, node: MappingNode) -> LineDict:
        self.flatten_mapping(node)
        result = LineDict()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def construct_line_list(self, node: SequenceNode) -> LineList:
        result = LineList(self.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


_LineConstructor.add_constructor(Resolver.DEFAULT_MAPPING_TAG, _LineConstructor.construct_line_dict)
_LineConstructor.add_constructor(
    Resolver.DEFAULT_SEQUENCE_TAG, _LineConstructor.construct_line_list
)


def loader_class(parser_bases: tuple[type, ...]) -> type:
    """A loader reading events from `parser_bases` (libyaml's CParser, or PyYAML's
    Reader, Scanner and Parser in Python) through the guarded composer."""

    class Loader(_GuardedComposer, *parser_bases, _LineConstructor, Resolver):  # type: ignore[misc]
        def __init__(self, stream: str | bytes) -> None:
            parser_bases[0].__init__(self, stream)  # CParser, or the Reader
            for base in parser_bases[1:]:
                base.__init__(self)
            _GuardedComposer.__init__(self)
            _LineConstructor.__init__(self)
            Resolver.__init__(self)

    return Loader


if yaml.__with_libyaml__:
    _Loader = loader_class((yaml.cyaml.CParser,))  # C speed: 5x the pure-Python scanner
else:
    _Loader = loader_class((yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser))


def load_yaml(text: str | bytes, loader: type = _Loader) -> Any:
    """Parse one YAML document into LineDict/LineList (None when empty); raise YamlError with
    the line of what is wrong."""
    parser = loader(text)
    try:
        root = parser.get_single_node()
        return None if root is None else parser.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        if not isinstance(exc, ConstructorError):
            problem = f"YAML syntax error: {problem}"
        raise YamlError(problem, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"YAML error: {exc}", None) from None
    finally:
        parser.dispose()


def line_of(node: Any, key: Any = None) -> int | None:
    """The line of `key` (a mapping key or a list index) in node, else of node itself."""
    if isinstance(node, LineDict):
        return node.key_lines.get(key, node.line) if key is not None else node.line
    if isinstance(node, LineList):
        if isinstance(key, int) and 0 <= key < len(node.item_lines):
            return node.item_lines[key]
        return node.line
    return None


def line_at(document: Any, path: KeyPath) -> int | None:
    """The line of the deepest key or item along `path` that the document holds."""
    line = None
    node = document
    for part in path:
        if isinstance(node, LineDict) and part in node.key_lines:
            line, node = node.key_lines[part], node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and 0 <= part < len(node):
            line, node = node.item_lines[part], node[part]
        else:
            break
    return line


def control_character(text: str, allowed: str = "") -> str | None:
    """The first control character or line separator in text (outside `allowed`), or None.
    Such a character in a value that reaches a header or an SMTP reply would end the line
    there and start a new header or command."""
    for ch in text:
        if ch not in allowed and unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            return ch
    return None
