"""Which calls of a group ready to leave together (coalesce.py) travel as one subrequest: the
lookups of one shape (lookups.py) merge into one query with `IN (...)`; every other call is a
subrequest of its own. `plan` is what the batcher asks to know whether a group still fits in one
Composite request, and what the transport sends."""

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

    @property
    def merged(self) -> bool:
        return len(self.attempts) > 1

    def values(self) -> list[str]:
        seen: dict[str, None] = {}
        for lookup in self.chosen:
            seen.setdefault(lookup.value, None)
        return list(seen)

    def request(self, account: Account) -> Attempt:
        """The merged query as an attempt of its own (its answer is split by the transport)."""
        first = self.attempts[0]
        statement = self.chosen[0].merged(self.values())
        deadline = Deadline(max(a.call.deadline.at for a in self.attempts))
        call = Call(account, Operation.SEARCH, deadline)
        headers = {"Sforce-Query-Options": f"batchSize={lookups.MERGED_BATCH}"}
        sub = composite.Subrequest("GET", first.request.url, {"q": statement}, None, headers)
        return Attempt(call, sub)


def plan(account: Account, attempts: list[Attempt]) -> list[Unit]:
    """The subrequests `attempts` travel as, in the order of their first call."""
    units: list[Unit] = []
    by_shape: dict[tuple[str, str], Unit] = {}
    for attempt in attempts:
        url = attempt.request.url
        for lookup in attempt.shapes:
            unit = by_shape.get((url, lookup.key))
            if unit is None or (unit.chosen and unit.chosen[0].key != lookup.key):
                continue
            first = unit.attempts[0]
            if not unit.chosen:  # its first lookup joins by this shape
                own = next(s for s in first.shapes if s.key == lookup.key)
                unit.chosen.append(own)
            values = [*unit.values(), lookup.value]
            if lookups.fits(lookup, values, url):
                unit.attempts.append(attempt)
                unit.chosen.append(lookup)
                break
            if len(unit.attempts) == 1:
                unit.chosen.clear()
        else:
            unit = Unit([attempt])
            units.append(unit)
            for lookup in attempt.shapes:
                current = by_shape.get((url, lookup.key))
                if current is None or len(current.attempts) > 1 or current.chosen:
                    by_shape[(url, lookup.key)] = unit
    return units


def counts(account: Account, attempts: list[Attempt]) -> tuple[int, int]:
    """Subrequests and query-type subrequests of a group (the Composite limits count these)."""
    units = plan(account, attempts)
    queries = sum(1 for u in units if composite.is_query(account, u.attempts[0].request))
    return len(units), queries


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
    return [copy(by_value[lookup.value]) for lookup in unit.chosen]
