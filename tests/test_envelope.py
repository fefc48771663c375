"""A dead letter read back is a typed ``Envelope`` (as a marker is a ``Marker``): its fields
checked, its document kept whole so that writing it back loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stalwart import DeadLetterError, DeadLetterStore
from stalwart._envelope import Envelope, StoredBody, encode_body


def test_a_kept_payload_reads_back_typed(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl", pipeline="p")
    envelope_id = store.keep_payload({"row": 7}, reason="row 7 rejected")
    envelope = store.load(envelope_id)
    assert isinstance(envelope, Envelope)
    assert (envelope.kind, envelope.state, envelope.reason) == (
        "payload",
        "pending",
        "row 7 rejected",
    )
    assert (envelope.pipeline, envelope.run_id, envelope.step, envelope.attempts) == (
        "p",
        "",
        "",
        1,
    )
    assert store.show(envelope_id) == dict(envelope.document)


def test_fields_of_the_wrong_type_make_it_corrupt_but_still_shown(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl", pipeline="p")
    envelope_id = store.keep_payload(b"x", reason="r")
    path = tmp_path / "dl" / f"{envelope_id}.json"
    document = json.loads(path.read_text())
    document["state"] = ["pending"]
    path.write_text(json.dumps(document))
    with pytest.raises(DeadLetterError, match=r"corrupt \('state' is a list, not text\)"):
        store.load(envelope_id)
    assert store.show(envelope_id)["state"] == ["pending"]  # a person can still look at it
    assert [row.state for row in store.list()] == ["corrupt"]


def test_writing_back_keeps_fields_it_does_not_know(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl", pipeline="p")
    envelope_id = store.keep_payload("text", reason="r")
    path = tmp_path / "dl" / f"{envelope_id}.json"
    document = json.loads(path.read_text())
    document["ticket"] = "OPS-1234"  # added by a person or a newer tool
    path.write_text(json.dumps(document))
    discarded = store.discard(envelope_id)
    assert discarded.state == "discarded"
    stored = json.loads(path.read_text())
    assert stored["ticket"] == "OPS-1234"
    assert [entry["action"] for entry in stored["history"]] == ["discarded"]


@pytest.mark.parametrize("body", [b"plain text", b"\xff\xfe binary"])
def test_a_stored_body_gives_back_the_exact_bytes(body: bytes) -> None:
    stored = StoredBody.parse(encode_body(body))
    assert stored.content() == body
    altered = StoredBody(stored.encoding, stored.data + "x", stored.sha256)
    with pytest.raises(DeadLetterError, match=r"altered|decoded"):
        altered.content()
