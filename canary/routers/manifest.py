"""A router that keeps the weights and the rollout state in a VirtualService manifest file.

For GitOps pipelines, where the manifest in a repository is the truth and a controller (Argo CD, Flux)
applies it: canary edits the file, the pipeline commits it. The weights and the state annotation are
written together, atomically: a temporary file in the same folder, flushed, renamed over the original
(the folder flushed too), so a crash leaves the old file or the new one, never half of either. A write
is made only if the file still holds what was read (its digest is the revision); the commands that write
hold the audit log's lock, so two canary commands never interleave on one file. The file keeps its mode;
a symbolic link is followed and its target replaced; a file without write permission is refused; the
file keeps its owner where canary may keep it (as root); a temporary file a killed command left behind is
removed by the next write.
The file may hold several YAML documents (a DestinationRule beside the VirtualService is used by the
preflight); only the VirtualService named by the policy's target changes, and in it only the values that
change: the weights' numbers and the state annotation's line are edited in the text (`yaml_edit`), so
comments, quoting and every other document stay as written and a commit of canary's change is a diff of
those lines. Where the document's text cannot be edited value by value, the VirtualService document is
written out whole in place of its content (the comments around it kept). A byte-order mark and CRLF line
endings are kept; nothing is written that does not load back as the documents meant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from canary.errors import InputError, RouterError, WeightConflict
from canary.inputs import read_file
from canary.model import Weights
from canary.outputs import replace_file
from canary.policy import Target
from canary.routers.virtualservice import RouteRead, read_route, subsets_problem, with_route
from canary.routers.yaml_edit import edit_values, line_ending
from canary.state import RolloutState


def _unique_keys(base: type[yaml.SafeLoader]) -> type[yaml.SafeLoader]:
    """`base` refusing a mapping that names a key twice: PyYAML keeps the last, kubectl (sigs.k8s.io/yaml)
    refuses the file, so canary would move weights Kubernetes never reads."""

    class Loader(base):  # type: ignore[valid-type, misc]
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[object] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                with contextlib.suppress(TypeError):  # an unhashable key: the base constructor says so
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep)  # type: ignore[no-any-return]

    return Loader


# libyaml where PyYAML has it: a tick reads and writes the whole file, and pure-Python YAML is slow.
_LOADER = _unique_keys(getattr(yaml, "CSafeLoader", yaml.SafeLoader))
_PRECISE_LOADER = _unique_keys(yaml.SafeLoader)  # says where a mistake is more precisely
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
BOM = "\ufeff"


class ManifestRouter:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _bytes(self) -> bytes:
        try:
            return read_file(self.path, "manifest")
        except InputError as exc:
            raise RouterError(str(exc)) from None

    def _documents(self, data: bytes) -> _Parsed:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RouterError(f"{self.path}: not a text file") from None
        # libyaml counts a byte-order mark into its marks and the pure-Python parser does not: parse without
        # it, so every span is an index into `text`, and give it back on writing.
        bom = text.startswith(BOM)
        text = text.removeprefix(BOM)
        try:
            events = list(yaml.parse(text, Loader=_LOADER))  # an alias is one event: nothing is expanded here
            alias = next((e for e in events if isinstance(e, yaml.AliasEvent)), None)
            if alias is None:
                return _Parsed(text, list(yaml.load_all(text, Loader=_LOADER)), _document_spans(events), bom)
        except RecursionError:
            raise RouterError(f"{self.path}: nested too deeply to be a manifest") from None
        except yaml.YAMLError:
            pass
        except ValueError:  # a number past the digits int() converts: the constructor's own error, no mark
            raise RouterError(f"{self.path}{_long_number(text)}: a number of thousands of digits") from None
        else:
            line = alias.start_mark.line + 1 if alias.start_mark else "?"
            raise RouterError(f"{self.path}:{line}: YAML aliases (*name) are not supported in a manifest")
        try:  # the pure-Python parser says where the mistake is more precisely: let it tell
            documents = list(yaml.load_all(text, Loader=_PRECISE_LOADER))
            return _Parsed(text, documents, _document_spans(yaml.parse(text, Loader=_PRECISE_LOADER)), bom)
        except RecursionError:
            raise RouterError(f"{self.path}: nested too deeply to be a manifest") from None
        except yaml.reader.ReaderError as exc:  # a character YAML does not allow: marked by its position only
            line = text[: exc.position].count("\n") + 1
            char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a character"
            raise RouterError(f"{self.path}:{line}: not valid YAML: {char} is not allowed there") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{self.path}:{mark.line + 1}" if mark is not None else str(self.path)
            raise RouterError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None

    def _index(self, documents: list[Any], target: Target) -> int:
        """The one document that is the target's VirtualService. Two copies are refused: `kubectl apply`
        applies the last, so moving only one would leave the other to undo it on the cluster."""
        found = [i for i, doc in enumerate(documents) if _is_target(doc, target)]
        name = f"VirtualService {target.namespace}/{target.virtual_service}"
        if not found:
            listed = [i for i, doc in enumerate(documents) if any(_is_target(item, target) for item in _items(doc))]
            if listed:
                raise RouterError(f"{self.path}: the {name} is an item of the List in document {listed[0] + 1}: "
                                  "canary moves the weights of a top-level document only; give it a document "
                                  "of its own")  # fmt: skip
            raise RouterError(f"{self.path}: no {name} in the file")
        if len(found) > 1:
            places = ", ".join(f"{i + 1}" for i in found)
            raise RouterError(f"{self.path}: documents {places} are all the {name}: keep one")
        return found[0]

    def read(self, target: Target, evidence: type | None = None) -> RouteRead:
        data = self._bytes()
        documents = self._documents(data).documents
        vs = documents[self._index(documents, target)]
        try:
            return read_route(vs, target, _digest(data), evidence, f"{self.path}")
        except RouterError as exc:
            raise RouterError(f"{self.path}: {exc}") from None

    def write(self, target: Target, read: RouteRead, weights: Weights, state: RolloutState) -> None:
        data = self._bytes()
        if _digest(data) != read.revision:
            raise WeightConflict(f"{self.path}: changed by someone else between canary's read and write")
        parsed = self._documents(data)
        index = self._index(parsed.documents, target)
        vs = with_route(parsed.documents[index], target, weights, state)
        self._replace(f"{BOM if parsed.bom else ''}{_rewritten(parsed, index, vs, str(self.path))}".encode())

    def _replace(self, data: bytes) -> None:
        try:
            replace_file(self.path, data)
        except InputError as exc:  # no longer a regular file, or made read-only
            raise RouterError(str(exc)) from None
        except OSError as exc:
            raise RouterError(f"{self.path}: cannot write the new weights: {exc.strerror}") from None

    def subsets_problem(self, target: Target) -> str | None:
        """Checked when the file holds DestinationRules; a GitOps repository may keep them elsewhere."""
        documents = self._documents(self._bytes()).documents
        rules = [d for d in documents if isinstance(d, dict) and d.get("kind") == "DestinationRule"]
        return subsets_problem(rules, target) if rules else None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Parsed:
    """A manifest file read: its text, its documents, and where each document's content lies in the text."""

    text: str  # without a byte-order mark
    documents: list[Any]
    spans: list[tuple[int, int]]
    bom: bool = False  # the file began with one


def _rewritten(parsed: _Parsed, index: int, vs: dict[str, Any], where: str) -> str:
    """The file's text with `vs` as its document `index`: the values that changed edited in place (a GitOps
    diff of the weights and the state line, the document's comments kept) where the edit reads back as
    `vs` and leaves the other documents as they were; else the document dumped whole, in place of its
    content (the comments around it kept). Either text is written only if it loads as meant."""
    if (as_json := _as_json(parsed.text, vs)) is not None:
        return as_json
    expected = [*parsed.documents[:index], vs, *parsed.documents[index + 1 :]]
    node = list(yaml.compose_all(parsed.text, Loader=_LOADER))[index]
    edited = edit_values(parsed.text, node, parsed.documents[index], vs)
    if edited is not None and _loads_as(edited, expected):
        return edited
    begin, end = parsed.spans[index]
    dumped = yaml.dump(vs, Dumper=_DUMPER, sort_keys=False, line_break=line_ending(parsed.text)).rstrip("\r\n")
    whole = f"{parsed.text[:begin]}{dumped}{parsed.text[end:]}"
    if not _loads_as(whole, expected):
        raise RouterError(f"{where}: canary cannot write the VirtualService into this file's text without changing "
                          "something else in it; nothing was written")  # fmt: skip
    return whole


def _as_json(text: str, vs: dict[str, Any]) -> str | None:
    """A file that is one JSON object stays JSON (kubectl and Argo CD read it as JSON), indented as it was;
    None for YAML."""
    try:
        if not isinstance(json.loads(text), dict):
            return None
    except ValueError:
        return None
    lines = text.strip().splitlines()
    indent = next((len(line) - len(line.lstrip(" ")) for line in lines[1:] if line.startswith(" ")), None)
    newline = line_ending(text)
    dumped = json.dumps(vs, indent=indent, ensure_ascii=False).replace("\n", newline)
    return dumped + (newline if text.endswith(("\n", "\r")) else "")


def _loads_as(text: str, documents: list[Any]) -> bool:
    with contextlib.suppress(yaml.YAMLError, RecursionError):
        return list(yaml.load_all(text, Loader=_LOADER)) == documents
    return False


def _document_spans(events: Iterable[yaml.Event]) -> list[tuple[int, int]]:
    """Where each document's content begins and ends in the text the parser's `events` came from, in the
    order `load_all` gives them: the comments before a document, its `---` and every other document are
    kept as written when one document's text is replaced."""
    spans: list[tuple[int, int]] = []
    begin = last = 0
    flow: list[bool] = []  # per open collection: flow style (its end is marked exactly) or block
    for event in events:
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            begin = _index_of(event.start_mark) if not flow else begin
            flow.append(bool(event.flow_style))
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            # A block collection's end is marked at the next token, past the comments after it: the content
            # ends where its last value does.
            last = _index_of(event.end_mark) if flow.pop() else last
            if not flow:
                spans.append((begin, last))
        elif isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
            last = _index_of(event.end_mark)
            if not flow:  # a document that is one value (or empty)
                spans.append((_index_of(event.start_mark), last))
    return spans


def _long_number(text: str) -> str:
    """`:line` of the first plain scalar too long for int(), or "" where none is found."""
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.ScalarEvent) and not event.style and len(event.value) > 4000:  # plain: None or ""
            return f":{event.start_mark.line + 1}" if event.start_mark else ""
    return ""


def _index_of(mark: Any) -> int:
    assert mark is not None, "the parser marks every event"
    return int(mark.index)


def _items(doc: Any) -> list[Any]:
    """The items of a `kind: List` (or `…List`) document, as `kubectl get -o yaml` writes several objects."""
    if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
        return list(doc["items"])
    return []


def _is_target(doc: Any, target: Target) -> bool:
    if not isinstance(doc, dict) or doc.get("kind") != "VirtualService":
        return False
    meta = doc.get("metadata")
    return (
        isinstance(meta, dict)  # else not an object canary could name
        and meta.get("name") == target.virtual_service
        and meta.get("namespace") in (None, target.namespace)  # none: applied to one (-n, kustomize, Argo CD)
    )
