"""``Envelope``: a dead letter as read back from its file, a typed record (as ``Marker`` is
for a ``.done`` marker), and the checks that a file read back is one.

An envelope file is JSON that people read (``deadletter show``) and tools may add to: the
record keeps the whole document (``document``) so that writing it back after a replay or a
discard loses nothing, and gives typed fields for what stalwart itself decides on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ._errors import DeadLetterError

__all__ = ["Envelope", "StoredBody", "StoredRequest", "encode_body"]

ENVELOPE_FORMAT = 1
_METHOD_RE = re.compile(r"\A[A-Z]{1,16}\Z")


def encode_body(body: bytes) -> dict[str, Any]:
    """A body as an envelope stores it: UTF-8 text when it is, else base64; its sha256."""
    digest = hashlib.sha256(body).hexdigest()
    try:
        return {
            "encoding": "utf-8",
            "data": body.decode("utf-8"),
            "sha256": digest,
            "size": len(body),
        }
    except UnicodeDecodeError:
        data = base64.b64encode(body).decode("ascii")
        return {"encoding": "base64", "data": data, "sha256": digest, "size": len(body)}


@dataclass(frozen=True, slots=True)
class StoredBody:
    """The exact bytes of a stored body, as ``encoding`` (``utf-8`` or ``base64``) text."""

    encoding: str
    data: str
    sha256: str

    @classmethod
    def parse(cls, record: object) -> StoredBody:
        if not isinstance(record, dict) or not isinstance(record.get("data"), str):
            raise DeadLetterError("the envelope's body is missing or malformed")
        return cls(str(record.get("encoding")), record["data"], str(record.get("sha256")))

    def content(self) -> bytes:
        """The bytes; ``DeadLetterError`` if they do not decode or their sha256 differs."""
        try:
            if self.encoding == "base64":
                body = base64.b64decode(self.data, validate=True)
            elif self.encoding == "utf-8":
                body = self.data.encode("utf-8")
            else:
                raise DeadLetterError(f"unknown body encoding {self.encoding!r}")
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise DeadLetterError(f"the envelope's body cannot be decoded: {exc}") from None
        if hashlib.sha256(body).hexdigest() != self.sha256:
            raise DeadLetterError("the envelope's body does not match its sha256: it was altered")
        return body


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """The HTTP request a dead letter keeps for replay (the URL redacted; no secret header)."""

    method: str
    url: str
    url_redacted: bool
    headers: Mapping[str, str]
    idempotency_key: str | None
    body: object
    """The stored body record, checked (``StoredBody.parse``) only when it is replayed."""

    @classmethod
    def parse(cls, record: object, envelope_id: str) -> StoredRequest:
        """``DeadLetterError`` saying what is wrong, if ``record`` is not a usable request."""
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("method"), str)
            or not isinstance(record.get("url"), str)
        ):
            raise DeadLetterError(f"dead letter {envelope_id} has no usable request")
        if not _METHOD_RE.match(record["method"]):
            raise DeadLetterError(
                f"dead letter {envelope_id} has no valid HTTP method "
                f"({record['method'][:20]!r}); inspect it with 'deadletter show'"
            )
        stored = record.get("headers")
        headers = {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}
        key = record.get("idempotency_key")
        return cls(
            method=record["method"],
            url=record["url"],
            url_redacted=bool(record.get("url_redacted")),
            headers=MappingProxyType(headers),
            idempotency_key=key if isinstance(key, str) and key else None,
            body=record.get("body"),
        )


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise TypeError(f"{key!r} is a {type(value).__name__}, not text")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One dead letter. ``kind``: ``http`` (a request to replay), ``payload`` (data kept for a
    person), or what a newer stalwart wrote. ``state``: ``pending``, ``replayed``,
    ``discarded`` or ``superseded``."""

    id: str
    kind: str
    state: str
    created_at: str
    pipeline: str
    run_id: str
    step: str
    reason: str
    attempts: int
    document: Mapping[str, Any]
    """The whole envelope as stored (read-only): what ``deadletter show`` prints."""

    @classmethod
    def parse(cls, data: object, envelope_id: str, where: str) -> Envelope:
        """An ``Envelope`` from a parsed JSON document, or ``DeadLetterError`` naming the
        file (``where``) and what is wrong with it."""
        if not isinstance(data, dict) or data.get("id") != envelope_id:
            raise DeadLetterError(
                f"dead letter {envelope_id} is corrupt (not an envelope for this id); "
                f"the file is {where}"
            )
        try:
            attempts = data.get("attempts", 1)
            if type(attempts) is not int:
                raise TypeError("'attempts' is not a whole number")  # noqa: TRY301
            return cls(
                id=envelope_id,
                kind=_text(data, "kind"),
                state=_text(data, "state") or "pending",
                created_at=_text(data, "created_at"),
                pipeline=_text(data, "pipeline"),
                run_id=_text(data, "run_id"),
                step=_text(data, "step"),
                reason=_text(data, "reason"),
                attempts=attempts,
                document=MappingProxyType(data),
            )
        except TypeError as exc:
            raise DeadLetterError(
                f"dead letter {envelope_id} is corrupt ({exc}); the file is {where}"
            ) from None

    def request(self) -> StoredRequest:
        """The request to replay; ``DeadLetterError`` if there is none usable."""
        return StoredRequest.parse(self.document.get("request"), self.id)

    def settled_at(self) -> str:
        """When it was replayed or discarded (for messages)."""
        for key in ("replayed_at", "discarded_at", "superseded_at"):
            value = self.document.get(key)
            if isinstance(value, str) and value:
                return value
        return "earlier"

    def with_history(self, entry: Mapping[str, str], **fields: Any) -> dict[str, Any]:
        """The document to write back: ``fields`` set, ``entry`` appended to its history."""
        document = dict(self.document)
        document.update(fields)
        history = document.get("history")
        document["history"] = [*(history if isinstance(history, list) else []), dict(entry)]
        return document
