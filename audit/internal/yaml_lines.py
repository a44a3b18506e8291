"""A safe YAML loader that remembers where things are and refuses duplicate keys.

``yaml.safe_load`` forgets line numbers and lets a repeated key silently win, so a
spec error could name neither the line nor the mistake.  :class:`LineLoader` is a
``yaml.SafeLoader`` (same tags, nothing executable) that builds

- :class:`LineDict` for mappings: a ``dict`` with ``line`` (where the mapping
  starts), ``key_lines`` and ``value_lines`` (key -> line of the key, of its value);
- :class:`LineList` for sequences: a ``list`` with ``line`` and ``item_lines``;

and raises :class:`DuplicateKeyError` (a ``yaml.MarkedYAMLError``, marked at the
second occurrence) when a mapping repeats a key.  Lines are 1-based.  Scalars are
plain Python values; their lines are in the enclosing container.

Untrusted YAML is bounded before anything is built: nesting deeper than
:data:`~audit.internal.safe_read.MAX_DEPTH` (counted while composing, so the
recursive composer never overflows), a recursive alias, or a document holding more
than :data:`~audit.internal.safe_read.MAX_YAML_NODES` values once its aliases are
expanded (a "billion laughs" alias bomb) raises :class:`BoundError`.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from audit.internal.safe_read import MAX_DEPTH, MAX_YAML_NODES, ErrorFactory, read_text

_MERGE_TAG = "tag:yaml.org,2002:merge"


class LineDict(dict):
    """A mapping read from YAML, with the lines of its keys and values."""

    line: int | None = None
    """Line where the mapping starts (its first key for a block mapping)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}
        self.value_lines: dict[Any, int] = {}


class LineList(list):
    """A sequence read from YAML, with the line of each item."""

    line: int | None = None
    """Line where the sequence starts."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping gives the same key twice.

    ``path`` is the key's position from the document root (mapping keys and
    sequence indexes), ``line`` the 1-based line of the second occurrence and
    ``first_line`` that of the first.
    """

    def __init__(self, path: tuple[Any, ...], line: int, first_line: int, mark: yaml.Mark) -> None:
        super().__init__(problem=f"duplicate key {path[-1]!r} (first given on line {first_line})",
                         problem_mark=mark)
        self.path = path
        self.line = line
        self.first_line = first_line


class BoundError(yaml.MarkedYAMLError):
    """A document passes a bound of :mod:`audit.internal.safe_read` (nesting depth,
    expanded size, a recursive alias); marked where it does."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded(root: Node) -> None:
    """Raise :class:`BoundError` for a recursive alias, or when the document expanded
    (every alias replaced by a copy of its anchor) would hold more than
    ``MAX_YAML_NODES`` nodes or nest deeper than ``MAX_DEPTH``.  Memoised per node
    and without recursion: linear in the composed graph, whatever the expansion."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(kid)] for kid in kids)
            depth[key] = 1 + max((depth[id(kid)] for kid in kids), default=0)
            if size[key] > MAX_YAML_NODES:
                raise BoundError(f"aliases expand to more than {MAX_YAML_NODES} values "
                                 "(a YAML alias bomb?)", node.start_mark)
            if depth[key] > MAX_DEPTH:
                raise BoundError(f"aliases nest lists or mappings more than {MAX_DEPTH} "
                                 "levels deep", node.start_mark)
            continue
        if key in size:
            continue
        if key in active:
            raise BoundError("recursive alias (an anchor used inside itself)",
                             node.start_mark)
        active.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in _children(node) if id(kid) not in size)


class LineLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records lines, rejects duplicate keys and bounds
    nesting and alias expansion."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise BoundError(f"lists or mappings nested more than {MAX_DEPTH} levels deep",
                                 self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Node) -> Any:
        self._check_duplicates(node, (), set())
        return super().construct_document(node)

    def _check_duplicates(self, node: Node, path: tuple[Any, ...], seen: set[int]) -> None:
        # Walk the composed node graph before construction, so that the error knows
        # the dotted path of the mapping (construction is not depth-first).
        if id(node) in seen:  # an alias: already checked, and may be recursive
            return
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self._check_duplicates(item, path + (index,), seen)
        elif isinstance(node, MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    self._check_duplicates(value_node, path, seen)
                    continue
                key: Any = None
                if isinstance(key_node, ScalarNode):
                    key = self.construct_object(key_node, deep=True)
                    try:
                        if key in first:
                            raise DuplicateKeyError(path + (key,), _line(key_node), first[key],
                                                    key_node.start_mark)
                        first[key] = _line(key_node)
                    except TypeError:  # unhashable: construct_mapping reports it
                        pass
                self._check_duplicates(value_node, path + (key,), seen)

    def construct_line_dict(self, node: MappingNode):
        data = LineDict()
        data.line = _line(node)
        yield data
        data.update(self.construct_mapping(node))  # flattens merge keys into node.value
        for key_node, value_node in node.value:
            key = self.construct_object(key_node)
            data.key_lines[key] = _line(key_node)
            data.value_lines[key] = _line(value_node)

    def construct_line_list(self, node: SequenceNode):
        data = LineList()
        data.line = _line(node)
        yield data
        data.extend(self.construct_sequence(node))
        data.item_lines = [_line(item) for item in node.value]


LineLoader.add_constructor("tag:yaml.org,2002:map", LineLoader.construct_line_dict)
LineLoader.add_constructor("tag:yaml.org,2002:seq", LineLoader.construct_line_list)


def load(text: str) -> tuple[Any, int | None]:
    """Parse one YAML document: ``(data, line of its root node)``, or ``(None, None)``
    for an empty document.  Raises ``yaml.YAMLError`` (``DuplicateKeyError``
    included) on invalid input."""
    loader = LineLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expanded(node)
        return loader.construct_document(node), _line(node)
    finally:
        loader.dispose()


def load_file(path: str, what: str, error: ErrorFactory) -> tuple[Any, int | None]:
    """Read and :func:`load` the YAML file ``path`` (UTF-8, a BOM allowed).  Every
    problem becomes ``error(field, line, message)``: a missing or unreadable file,
    a folder, a FIFO or other non-regular file, bad UTF-8, a duplicate key (its
    dotted field and line), invalid YAML (its line), a bound passed (its line).
    ``what`` names the file in messages ("spec file")."""
    return load_text(read_text(path, what, error), what, error)


def load_text(text: str, what: str, error: ErrorFactory) -> tuple[Any, int | None]:
    """:func:`load` ``text`` with every problem raised as ``error`` (see
    :func:`load_file`)."""
    try:
        return load(text)
    except DuplicateKeyError as exc:
        field = "".join(f"[{part}]" if isinstance(part, int) and not isinstance(part, bool)
                        else f".{part}" for part in exc.path).lstrip(".")
        raise error(field, exc.line,
                    f"duplicate key (first given on line {exc.first_line})") from None
    except BoundError as exc:
        mark = exc.problem_mark
        raise error(None, mark.line + 1 if mark else None, exc.problem) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "cannot parse"
        raise error(None, mark.line + 1 if mark else None, f"invalid YAML: {problem}") from None
    except RecursionError:  # a bound above should come first; never let one escape
        raise error(None, None, f"{what}: nested too deep to read") from None
    except yaml.YAMLError as exc:
        raise error(None, None, f"invalid YAML: {exc}") from None
