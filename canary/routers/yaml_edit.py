"""Edit the values of one YAML document in its text, leaving every other character as written.

A GitOps repository reviews canary's change as a diff: rewriting a whole document from its parsed objects
drops the comments inside it and changes quoting and line folding, so a weight shift shows as a rewrite.
`edit_values` instead replaces the text of each scalar whose value changed and inserts the keys that are
new, at the indentation of their mapping. It handles what a route write changes (numbers and strings,
keys added to block mappings); for anything else (a value of another kind, a key removed, a list grown,
a flow mapping to add to) it returns None and the caller writes the document whole. The caller checks the
result parses to what it meant to write: the edit is only a way of writing, never the truth.
"""

from __future__ import annotations

from typing import Any

import yaml

_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def edit_values(text: str, node: yaml.Node, old: Any, new: Any) -> str | None:
    """`text` with the document `node` (composed from `text`, which loads as `old`) edited to hold `new`;
    None where that cannot be done value by value."""
    edits: list[tuple[int, int, str]] = []
    if not _edit(node, old, new, edits):
        return None
    for begin, end, replacement in sorted(edits, reverse=True):
        text = f"{text[:begin]}{replacement}{text[end:]}"
    return text


def _edit(node: yaml.Node, old: Any, new: Any, edits: list[tuple[int, int, str]]) -> bool:
    if type(old) is type(new) and old == new:
        return True
    if isinstance(node, yaml.ScalarNode):
        scalar = _scalar(new)
        if scalar is None or isinstance(old, dict | list):
            return False
        edits.append((node.start_mark.index, node.end_mark.index, scalar))
        return True
    if isinstance(node, yaml.SequenceNode) and isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) == len(node.value) and all(
            _edit(n, o, w, edits) for n, o, w in zip(node.value, old, new, strict=True)
        )
    if isinstance(node, yaml.MappingNode) and isinstance(old, dict) and isinstance(new, dict):
        return _edit_mapping(node, old, new, edits)
    return False


def _edit_mapping(node: yaml.MappingNode, old: dict[Any, Any], new: dict[Any, Any], edits: list[Any]) -> bool:
    if not set(old) <= set(new) or len(node.value) != len(old):
        return False  # a key removed, or keys the text spells otherwise than they load
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value not in old:
            return False
        if not _edit(value_node, old[key_node.value], new[key_node.value], edits):
            return False
    added = [key for key in new if key not in old]
    if not added:
        return True
    if node.flow_style or not node.value:
        return False
    first = node.value[0][0].start_mark
    lines = []
    for key in added:
        block = _block(key, new[key], first.column)
        if block is None:
            return False
        lines.append(block)
    # Before the first key, at its column: the new keys, then the first key's own indentation again.
    edits.append((first.index, first.index, "".join(f"{line}\n{' ' * first.column}" for line in lines)))
    return True


def _block(key: Any, value: Any, column: int) -> str | None:
    """`key: value` as block lines at `column` (without the first line's indentation): a scalar, or a mapping
    of scalars."""
    name = _scalar(key)
    if name is None:
        return None
    if not isinstance(value, dict):
        scalar = _scalar(value)
        return None if scalar is None else f"{name}: {scalar}"
    inner = [(_scalar(k), _scalar(v)) for k, v in value.items()]
    if not inner or any(k is None or v is None for k, v in inner):
        return None
    return "\n".join([f"{name}:", *(f"{' ' * (column + 2)}{k}: {v}" for k, v in inner)])


def _scalar(value: Any) -> str | None:
    """A number or string as YAML text that reads back as itself in any context (the flow style's quoting)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    text = yaml.dump([value], Dumper=_DUMPER, default_flow_style=True, width=2**30)
    inner = text.strip()[1:-1]
    return inner if "\n" not in inner else None
