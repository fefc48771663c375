"""``record_type`` behaves as ``collections.namedtuple`` wherever a caller can tell."""

from __future__ import annotations

import copy
import pickle
from collections import namedtuple
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalwart._journal import Entry
from stalwart._records import Marker, OutputRecord, record_type

if TYPE_CHECKING:  # as the package declares its records

    class Ours(NamedTuple):
        a: int
        b: int
        c: int = 3

else:

    def _new_point(_cls, a, b, c=3):  # as the package declares its records
        return tuple.__new__(_cls, (a, b, c))

    Ours = record_type("Point", _new_point)
Point = namedtuple("Point", ["a", "b", "c"], defaults=(3,))  # the reference


class Sub(Ours):  # as the package's records are used: methods on a subclass
    __slots__ = ()

    def total(self) -> Any:
        return sum(self)


def outcome(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        return ("made", tuple(factory(*args, **kwargs)))
    except TypeError:
        return ("TypeError", None)


names = st.sampled_from(["a", "b", "c", "d"])


@given(
    args=st.lists(st.integers(), max_size=4).map(tuple),
    kwargs=st.dictionaries(names, st.integers(), max_size=4),
)
def test_any_call_makes_the_same_tuple_or_fails_the_same_way(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    assert outcome(Ours, args, kwargs) == outcome(Point, args, kwargs)


def failure(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    try:
        factory(*args, **kwargs)
    except TypeError as exc:
        return str(exc)
    return "no error"


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1, 2, 3, 4), {}), ((1,), {}), ((1, 2), {"a": 5}), ((1, 2), {"d": 5}), ((), {"c": 1})],
)
def test_a_wrong_call_says_what_namedtuple_says(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    message = failure(Ours, args, kwargs)
    assert message.startswith("Point.__new__() ")  # named as namedtuple's is
    assert message == failure(Point, args, kwargs)


def test_the_class_has_what_namedtuple_gives_it() -> None:
    for name in ("_fields", "_field_defaults", "__match_args__", "__doc__"):
        assert getattr(Ours, name) == getattr(Point, name), name
    point = Sub(1, b=2)
    reference = Point(1, b=2)
    assert point == (1, 2, 3)
    assert tuple(point) == tuple(reference)
    assert hash(point) == hash(reference)
    assert (point.a, point.b, point.c) == (1, 2, 3)
    assert repr(point) == "Sub(a=1, b=2, c=3)"
    assert repr(Ours(1, 2)) == repr(reference)
    assert point._asdict() == reference._asdict() == {"a": 1, "b": 2, "c": 3}
    assert point.total() == 6
    assert not hasattr(point, "__dict__")
    with pytest.raises(AttributeError):
        point.a = 5  # type: ignore[misc]  # read-only for mypy too


def test_make_and_replace_build_the_subclass_and_check_their_input() -> None:
    point = Sub._make([1, 2, 3])
    assert type(point) is Sub
    moved = point._replace(b=20)
    assert (type(moved), moved) == (Sub, (1, 20, 3))
    with pytest.raises(ValueError, match=r"unexpected field names: \['z'\]"):
        point._replace(**{"z": 1})
    with pytest.raises(TypeError, match="Expected 3 arguments, got 2"):
        Sub._make([1, 2])


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_records_survive_pickling_and_copies(protocol: int) -> None:
    for record in (OutputRecord("out.json", 2, "0" * 64), Entry("item-1", "done")):
        back = pickle.loads(pickle.dumps(record, protocol))  # noqa: S301 - our own bytes
        assert (type(back), back) == (type(record), record)
        assert copy.copy(record) == copy.deepcopy(record) == record
    marker = Marker(
        pipeline="p",
        step="s",
        run_id="r",
        started="t0",
        finished="t1",
        duration_s=0.5,
        attempts=1,
        retries=0,
        runs=1,
        outputs=(OutputRecord("out.json", 2, "0" * 64),),
    )
    assert copy.copy(marker) == marker  # (no deepcopy: its params are a mappingproxy)


def test_a_match_statement_reads_the_fields_by_position() -> None:
    match Sub(1, 2):
        case Sub(first, second, third):
            assert (first, second, third) == (1, 2, 3)
        case _:  # pragma: no cover - the case above must match
            pytest.fail("no match")
