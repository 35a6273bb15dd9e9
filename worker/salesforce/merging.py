"""Which calls of a group ready to leave together (coalesce.py) travel as one subrequest: the
lookups of one shape (lookups.py) merge into one query with `IN (...)`; every other call is a
subrequest of its own. A `Planner` is what the batcher keeps per group to know whether it still
fits in one Composite request (a call at a time); `plan` is what the transport sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.accounts import Account
from worker.contract import Operation
from worker.deadline import Deadline
from worker.salesforce import composite, lookups
from worker.salesforce.call import Answer, Attempt, Call, Response
from worker.salesforce.errors import Verdict
from worker.salesforce.lookups import Lookup


def shapes(account: Account, attempt: Attempt) -> tuple[Lookup, ...]:
    """The ways this call could merge with others (none for anything but a first-page query)."""
    request = attempt.request
    if not account.merge_lookups or not composite.is_query(account, request):
        return ()
    params = request.params or {}
    if request.method != "GET" or set(params) != {"q"}:
        return ()
    return tuple(lookups.lookups(params["q"]))


@dataclass(eq=False)
class Unit:
    """One subrequest: a call alone, or lookups merged (all with the same shape `key`)."""

    attempts: list[Attempt]
    chosen: list[Lookup] = field(default_factory=list)  # each attempt's lookup, when merged
    # The distinct values of `chosen`, in order, and the URL-encoded length of their literals
    # joined by ", " (kept as lookups join, so a join is checked without writing the statement).
    _distinct: dict[str, None] = field(default_factory=dict)
    _literals: int = 0

    @property
    def merged(self) -> bool:
        return len(self.attempts) > 1

    def values(self) -> list[str]:
        return list(self._distinct)

    def choose(self, lookup: Lookup) -> None:
        self.chosen.append(lookup)
        if lookup.value not in self._distinct:
            self._literals = self._with(lookup.value)
            self._distinct[lookup.value] = None

    def unchoose(self) -> None:
        self.chosen.clear()
        self._distinct.clear()
        self._literals = 0

    def admits(self, lookup: Lookup, resource: str) -> bool:
        """Would the merged statement, with `lookup`'s value added to the values so far, stay
        within the bounds? The same answer as `lookups.fits(lookup, [*self.values(),
        lookup.value], resource)` (a value already there counted again), in constant time."""
        count = len(self._distinct) + 1
        return lookups.fits_length(lookup, count, self._with(lookup.value), resource)

    def _with(self, value: str) -> int:
        separator = lookups.SEPARATOR_LENGTH if self._distinct else 0
        return self._literals + separator + lookups.literal_length(value)

    def request(self, account: Account) -> Attempt:
        """The merged query as an attempt of its own (its answer is split by the transport)."""
        first = self.attempts[0]
        statement = self.chosen[0].merged(self.values())
        deadline = Deadline(max(a.call.deadline.at for a in self.attempts))
        call = Call(account, Operation.SEARCH, deadline)
        headers = {"Sforce-Query-Options": f"batchSize={lookups.MERGED_BATCH}"}
        sub = composite.Subrequest("GET", first.request.url, {"q": statement}, None, headers)
        return Attempt(call, sub)


class Planner:
    """What a group's calls travel as, one call at a time: the batcher adds each call as it
    joins (`add` answers the Composite counts so far, without planning the group again) and
    the transport plans the group it sends (`plan`)."""

    def __init__(self, account: Account) -> None:
        self._account = account
        self.units: list[Unit] = []
        self._by_shape: dict[tuple[str, str], Unit] = {}
        self._queries = 0

    def add(self, attempt: Attempt, query: bool = False) -> tuple[int, int]:
        """Plan one more call; the subrequests and query-type subrequests of the group so far
        (the Composite limits count these). `query` is the batcher's own flag, unused here:
        a merged unit is one query whatever it carries."""
        by_shape = self._by_shape
        url = attempt.request.url
        for lookup in attempt.shapes:
            unit = by_shape.get((url, lookup.key))
            if unit is None or (unit.chosen and unit.chosen[0].key != lookup.key):
                continue
            first = unit.attempts[0]
            if not unit.chosen:  # its first lookup joins by this shape
                own = next(s for s in first.shapes if s.key == lookup.key)
                unit.choose(own)
            if unit.admits(lookup, url):
                unit.attempts.append(attempt)
                unit.choose(lookup)
                break
            if len(unit.attempts) == 1:
                unit.unchoose()
        else:
            unit = Unit([attempt])
            self.units.append(unit)
            if composite.is_query(self._account, attempt.request):
                self._queries += 1
            for lookup in attempt.shapes:
                current = by_shape.get((url, lookup.key))
                if current is None or len(current.attempts) > 1 or current.chosen:
                    by_shape[(url, lookup.key)] = unit
        return len(self.units), self._queries


def plan(account: Account, attempts: list[Attempt]) -> list[Unit]:
    """The subrequests `attempts` travel as, in the order of their first call."""
    planner = Planner(account)
    for attempt in attempts:
        planner.add(attempt)
    return planner.units


def copy(body: Any) -> Any:
    """A body of one's own (a job may change the records it gets)."""
    return orjson.loads(orjson.dumps(body)) if body is not None else None


def split(unit: Unit, answer: Answer) -> list[Any] | None:
    """Each merged lookup's own answer body, in the unit's order, or None: then each goes
    alone (the merged query failed, paged, or its answer cannot be split provably right)."""
    if not isinstance(answer, Response) or answer.status != 200:
        return None
    if answer.classified.verdict is not Verdict.SUCCESS:
        return None
    values = unit.values()
    shares = lookups.split(unit.chosen[0], values, answer.body)
    if shares is None:
        return None
    by_value = dict(zip(values, shares, strict=True))
    # Each share is already a body of its own (lookups.split copies each record for each of its
    # owners): the first job of a value takes it as it is, a second job of the same value a copy.
    taken: set[str] = set()
    bodies = []
    for lookup in unit.chosen:
        share = by_value[lookup.value]
        bodies.append(copy(share) if lookup.value in taken else share)
        taken.add(lookup.value)
    return bodies
