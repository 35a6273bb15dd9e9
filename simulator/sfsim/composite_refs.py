"""References between composite subrequests: `@{refId.id}`, `@{refId.records[0].Id}`.

A later subrequest may name an earlier one's answer in its url or body. A reference to a
subrequest that failed, that has not run, or whose answer has no such value cannot be resolved:
the subrequest is then not executed and answers 400 PROCESSING_HALTED.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REFERENCE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*")
_REF_RE = re.compile(r"@\{([A-Za-z0-9][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])+)\}")
_STEP_RE = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


class Unresolved(Exception):
    """A reference whose value does not exist (yet, or because its subrequest failed)."""

    def __init__(self, reference: str, ref_id: str) -> None:
        super().__init__(
            f"Invalid reference specified. No value for {reference} found in {ref_id}."
        )
        self.message = str(self)


def _walk(body: Any, path: str) -> Any:
    value = body
    for match in _STEP_RE.finditer(path):
        name, index = match.group(1), match.group(2)
        if name is not None:
            if not isinstance(value, Mapping) or name not in value:
                raise LookupError(name)
            value = value[name]
        else:
            if not isinstance(value, list) or int(index) >= len(value):
                raise LookupError(index)
            value = value[int(index)]
    if value is None:
        raise LookupError(path)
    return value


class References:
    """The answers of the subrequests run so far, by referenceId (successful ones only)."""

    def __init__(self) -> None:
        self._answers: dict[str, Any] = {}

    def record(self, ref_id: str, status: int, body: Any) -> None:
        if status < 400:
            self._answers[ref_id] = body

    def _value(self, match: re.Match[str]) -> Any:
        ref_id, path = match.group(1), match.group(2)
        if ref_id not in self._answers:
            raise Unresolved(f"{ref_id}{path}", ref_id)
        try:
            return _walk(self._answers[ref_id], path)
        except LookupError:
            raise Unresolved(f"{ref_id}{path}", ref_id) from None

    def in_text(self, text: str) -> str:
        """Every reference in `text` replaced by its value as text."""

        def replace(match: re.Match[str]) -> str:
            value = self._value(match)
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)

        return _REF_RE.sub(replace, text)

    def in_body(self, body: Any) -> Any:
        """A copy of a JSON body with its references resolved; a string that is exactly one
        reference takes the referenced value itself (a number stays a number)."""
        if isinstance(body, str):
            whole = _REF_RE.fullmatch(body)
            return self._value(whole) if whole is not None else self.in_text(body)
        if isinstance(body, list):
            return [self.in_body(item) for item in body]
        if isinstance(body, dict):
            return {key: self.in_body(value) for key, value in body.items()}
        return body
