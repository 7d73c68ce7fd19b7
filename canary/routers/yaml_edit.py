"""Edit the values of one YAML document in its text, leaving every other character as written.

A GitOps repository reviews canary's change as a diff: rewriting a whole document from its parsed objects
drops the comments inside it and changes quoting and line folding, so a weight shift shows as a rewrite.
`edit_values` instead replaces the text of each scalar whose value changed (its anchor and tag kept) and
inserts the keys that are new: in a block mapping at its indentation, in a flow mapping before its closing
brace, in place of an empty value (`annotations:` with nothing after it, `~`, `{}`). New lines take the
file's line ending. It handles what a route write changes (numbers and strings, mappings of them added); for
anything else (a value of another kind, a key removed, a list grown) it returns None and the caller writes
the document whole. The caller checks the result parses to what it meant to write: the edit is only a way of
writing, never the truth.
"""

from __future__ import annotations

from typing import Any

import yaml

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def edit_values(text: str, node: yaml.Node, old: Any, new: Any) -> str | None:
    """`text` with the document `node` (composed from `text`, which loads as `old`) edited to hold `new`;
    None where that cannot be done value by value."""
    editor = _Editor(text)
    if not editor.edit(node, old, new, column=None):
        return None
    for begin, end, replacement in sorted(editor.edits, reverse=True):
        text = f"{text[:begin]}{replacement}{text[end:]}"
    return text


def line_ending(text: str) -> str:
    """The line ending new lines in `text` take: CRLF where the text has one, else LF."""
    return "\r\n" if "\r\n" in text else "\n"


class _Editor:
    def __init__(self, text: str) -> None:
        self.text = text
        self.newline = line_ending(text)
        self.edits: list[tuple[int, int, str]] = []

    def edit(self, node: yaml.Node, old: Any, new: Any, column: int | None) -> bool:
        """`column`: where the key that holds `node` begins (None for the document itself)."""
        if type(old) is type(new) and old == new:
            return True
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, old, new, column)
        if isinstance(node, yaml.SequenceNode) and isinstance(old, list) and isinstance(new, list):
            return len(old) == len(new) == len(node.value) and all(
                self.edit(n, o, w, column=None) for n, o, w in zip(node.value, old, new, strict=True)
            )
        if isinstance(node, yaml.MappingNode) and isinstance(old, dict) and isinstance(new, dict):
            return self._mapping(node, old, new, column)
        return False

    def _scalar(self, node: yaml.ScalarNode, old: Any, new: Any, column: int | None) -> bool:
        begin, end = _past_properties(self.text, node.start_mark.index, node.end_mark.index), node.end_mark.index
        if node.style in ("|", ">"):  # a block scalar's span takes in the line breaks after it: keep those
            while end > begin and self.text[end - 1] in "\r\n":
                end -= 1
        if old is None and isinstance(new, dict):  # `annotations:` with nothing after it, or `~`
            if begin == end and column is not None:
                lines = _lines(new, column + 2)
                replacement = None if lines is None else "".join(f"{self.newline}{line}" for line in lines)
            else:
                replacement = _flow(new)
        elif isinstance(old, dict | list):
            return False
        else:
            replacement = _flow(new)
        if replacement is None:
            return False
        self.edits.append((begin, end, replacement))
        return True

    def _mapping(self, node: yaml.MappingNode, old: dict[Any, Any], new: dict[Any, Any], column: int | None) -> bool:
        if not set(old) <= set(new) or len(node.value) != len(old):
            return False  # a key removed, or keys the text spells otherwise than they load
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value not in old:
                return False
            if not self.edit(value_node, old[key_node.value], new[key_node.value], key_node.start_mark.column):
                return False
        added = {key: new[key] for key in new if key not in old}
        if not added:
            return True
        if node.flow_style:  # before the closing brace
            braced = _flow(added)
            close = node.end_mark.index - 1
            if braced is None or self.text[close : close + 1] != "}":
                return False
            self.edits.append((close, close, (", " if node.value else "") + braced[1:-1]))
            return True
        if not node.value:
            return False
        first = node.value[0][0].start_mark
        # The file's own indentation step: how far this mapping's keys sit in from the key that holds it.
        step = first.column - column if column is not None and first.column > column else 2
        lines = _lines(added, first.column, step)
        if lines is None:
            return False
        # Before the first key and the comment lines just above it, at its column: the new keys, then that
        # column's indentation again.
        at = _above_comments(self.text, first.index, first.column)
        block = "".join(f"{line}{self.newline}" for line in lines)[first.column :] + " " * first.column
        self.edits.append((at, at, block))
        return True


def _above_comments(text: str, index: int, column: int) -> int:
    """Where the comment lines right above the key at `index` begin, at its `column` (`index` itself where
    there are none, or the key does not begin its line): a comment about the first key stays with it."""
    start = line = text.rfind("\n", 0, index) + 1
    if text[line:index].strip():
        return index
    while line > 0:
        above = text.rfind("\n", 0, line - 1) + 1
        if not text[above:line].startswith(" " * column + "#"):
            break
        line = above
    return index if line == start else line + column


def _past_properties(text: str, begin: int, end: int) -> int:
    """Where a scalar's value begins in `text[begin:end]`, past its anchor (`&name`) and tag (`!!int`): the
    edit replaces the value and keeps them as written (what they make of the new value is checked on reading
    back)."""
    while begin < end and text[begin] in "&!":
        while begin < end and not text[begin].isspace():
            begin += 1
        while begin < end and text[begin] in " \t":
            begin += 1
    return begin


def _lines(mapping: dict[Any, Any], column: int, step: int = 2) -> list[str] | None:
    """A mapping of scalars, or of mappings of scalars, as block lines indented to `column`, nested ones
    `step` further."""
    out = []
    for key, value in mapping.items():
        name = _flow(key)
        if name is None:
            return None
        if isinstance(value, dict):
            inner = _lines(value, column + step, step)
            if inner is None or not inner:
                return None
            out += [f"{' ' * column}{name}:", *inner]
            continue
        scalar = _flow(value)
        if scalar is None:
            return None
        out.append(f"{' ' * column}{name}: {scalar}")
    return out


def _flow(value: Any) -> str | None:
    """A number or a string (or a mapping of them, in braces) as YAML text that reads back as itself in any
    context (the flow style's quoting)."""
    if isinstance(value, dict):
        entries = [(_flow(k), _flow(v)) for k, v in value.items()]
        if any(k is None or v is None for k, v in entries):
            return None
        return "{" + ", ".join(f"{k}: {v}" for k, v in entries) + "}"
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    text = yaml.dump([value], Dumper=_DUMPER, default_flow_style=True, width=2**30)
    inner = text.strip()[1:-1]
    return inner if "\n" not in inner else None
