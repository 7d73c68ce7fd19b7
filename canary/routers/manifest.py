"""A router that keeps the weights in a VirtualService manifest file.

For GitOps pipelines, where the manifest in a repository is the truth and a controller (Argo CD, Flux)
applies it: canary edits the file, the pipeline commits it. Writes are atomic (a temporary file in the
same folder, flushed, then renamed over the original), so a crash never leaves half-written weights.
The file may hold several YAML documents; only the VirtualService named by the policy's target changes.
Comments in the file are not preserved.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from canary.errors import RouterError
from canary.model import Weights
from canary.policy import Target
from canary.routers.virtualservice import check_expected, read_weights, with_weights


class ManifestRouter:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _documents(self) -> list[Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RouterError(f"{self.path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RouterError(f"{self.path}: cannot read: {exc}") from exc
        try:
            return list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{self.path}:{mark.line + 1}" if mark is not None else str(self.path)
            raise RouterError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None

    def _index(self, documents: list[Any], target: Target) -> int:
        for i, doc in enumerate(documents):
            if not isinstance(doc, dict) or doc.get("kind") != "VirtualService":
                continue
            meta = doc.get("metadata") or {}
            if meta.get("name") == target.virtual_service and meta.get("namespace", "default") == target.namespace:
                return i
        raise RouterError(f"{self.path}: no VirtualService {target.namespace}/{target.virtual_service} in the file")

    def get_weights(self, target: Target) -> Weights:
        documents = self._documents()
        return read_weights(documents[self._index(documents, target)], target)

    def set_weights(self, target: Target, weights: Weights, *, expected: Weights | None = None) -> None:
        documents = self._documents()
        index = self._index(documents, target)
        check_expected(documents[index], target, expected)
        documents[index] = with_weights(documents[index], target, weights)
        text = yaml.safe_dump_all(documents, sort_keys=False)
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, self.path)
        except OSError as exc:
            Path(temp).unlink(missing_ok=True)
            raise RouterError(f"{self.path}: cannot write the new weights: {exc.strerror}") from exc
