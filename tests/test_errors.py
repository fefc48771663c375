"""The exception tree: documented bases, context as attributes, survives pickling."""

from __future__ import annotations

import pickle

import pytest

import stalwart
from stalwart._errors import TRANSIENT_STATUSES


@pytest.mark.parametrize(
    "error",
    [
        stalwart.UsageError("bad run ID"),
        stalwart.RunLockedError("locked", lock_path="/x/.lock", holder="pid 1"),
        stalwart.HttpError("GET x failed", method="GET", url="http://h/x", attempts=3),
        stalwart.HttpStatusError(
            "GET x -> 503", method="GET", url="http://h/x", status=503, body_excerpt="busy"
        ),
        stalwart.ResponseFormatError("not JSON", method="GET", url="http://h/x"),
        stalwart.DeadLetterError("corrupt"),
        stalwart.Transient("again"),
        stalwart.Permanent("never"),
    ],
)
def test_errors_pickle_with_their_context(error: stalwart.StalwartError) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
    assert isinstance(copy, stalwart.StalwartError)


def test_errors_subclass_the_nearest_builtin() -> None:
    assert issubclass(stalwart.UsageError, ValueError)
    assert issubclass(stalwart.ResponseFormatError, ValueError)
    assert issubclass(stalwart.ResponseFormatError, stalwart.HttpError)
    assert issubclass(stalwart.RunLockedError, BlockingIOError)
    assert issubclass(stalwart.HttpStatusError, OSError)
    # an OSError, but not one the classifier takes for a network hiccup: a 404 stays permanent
    not_found = stalwart.HttpStatusError("GET x -> 404", method="GET", url="http://h/x", status=404)
    assert not stalwart.is_transient(not_found)
    assert not isinstance(not_found, ConnectionError | TimeoutError)
    locked = stalwart.RunLockedError("locked by pid 1", lock_path="/x/.lock", holder="pid 1")
    assert (str(locked), locked.errno, locked.lock_path) == ("locked by pid 1", None, "/x/.lock")


@pytest.mark.parametrize("status", [408, 425, 429, 500, 501, 502, 503, 504, 599])
def test_transient_statuses(status: int) -> None:
    error = stalwart.HttpStatusError("x", status=status)
    assert error.transient
    assert stalwart.is_transient(error)
    assert status in TRANSIENT_STATUSES or status >= 500


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_permanent_statuses(status: int) -> None:
    assert not stalwart.is_transient(stalwart.HttpStatusError("x", status=status))
