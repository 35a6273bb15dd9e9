"""SOQL and SOSL over HTTP: escaping, semantics, paging, errors."""

from __future__ import annotations

import pytest
from sfsim.testing import SimulatorClient

from tests.simulator.helpers import VERSION, Api

TRICKY = ["O'Neil & Sons", "back\\slash", "two\nlines", 'say "hi"', "tab\there", "100% _real_"]

ESC = {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote(text: str) -> str:
    return "'" + "".join(ESC.get(c, c) for c in text) + "'"


def names(reply_body: dict[str, object]) -> list[str]:
    records = reply_body["records"]
    assert isinstance(records, list)
    return [r["Name"] for r in records]


async def test_escaped_literals_find_tricky_names(api: Api, sim: SimulatorClient) -> None:
    await sim.seed("Account", [{"Name": n} for n in TRICKY])
    for name in TRICKY:
        reply = await api.query(f"SELECT Id, Name FROM Account WHERE Name = {quote(name)}")  # noqa: S608 - building SOQL is the point
        assert reply.status == 200, reply.body
        assert names(reply.body) == [name]
    like = "100\\% \\_real\\_"
    assert names((await api.query(f"SELECT Name FROM Account WHERE Name LIKE '{like}'")).body) == [  # noqa: S608 - building SOQL is the point
        "100% _real_"
    ]


@pytest.mark.parametrize(
    "literal",
    ["'O'Neil & Sons'", "'back\\slash'", "'two\nlines\\'", "'100\\% _real_'", "'unterminated"],
)
async def test_wrongly_escaped_literals_are_malformed(api: Api, literal: str) -> None:
    reply = await api.query(f"SELECT Id FROM Account WHERE Name = {literal}")  # noqa: S608 - building SOQL is the point
    assert (reply.status, reply.error_code) == (400, "MALFORMED_QUERY")
    assert "ERROR at Row:" in reply.body[0]["message"]


async def test_where_semantics(api: Api, sim: SimulatorClient) -> None:
    await sim.seed(
        "Account",
        [
            {"Name": "Acme", "Industry": "Tech", "AnnualRevenue": 100, "NumberOfEmployees": 5},
            {"Name": "acme west", "Industry": "Retail", "AnnualRevenue": 50.5},
            {"Name": "Globex", "Industry": None, "AnnualRevenue": 300, "NumberOfEmployees": 50},
            {"Name": "Initech_1", "Industry": "Tech"},
        ],
    )

    async def q(where: str, order: str = "ORDER BY Name") -> list[str]:
        reply = await api.query(f"SELECT Name FROM Account WHERE {where} {order}")  # noqa: S608 - building SOQL is the point
        assert reply.status == 200, reply.body
        return names(reply.body)

    assert await q("Name = 'ACME'") == ["Acme"]
    assert await q("Name LIKE 'acme%'") == ["Acme", "acme west"]
    assert await q("Name LIKE 'Initech\\__'") == ["Initech_1"]
    assert await q("Name LIKE 'Acm_'") == ["Acme"]
    assert await q("Industry = null") == ["Globex"]
    assert await q("Industry != 'Tech'") == ["acme west", "Globex"]
    assert await q("Industry IN ('tech', 'Retail')") == ["Acme", "acme west", "Initech_1"]
    assert await q("Industry NOT IN ('Tech')") == ["acme west", "Globex"]
    assert await q("AnnualRevenue >= 100 AND NumberOfEmployees < 10") == ["Acme"]
    assert await q("(AnnualRevenue > 200 OR Industry = 'Retail') AND NOT Name = 'x'") == [
        "acme west",
        "Globex",
    ]
    assert await q("CreatedDate = TODAY AND CreatedDate = LAST_N_DAYS:1 AND IsDeleted = false") == [
        "Acme",
        "acme west",
        "Globex",
        "Initech_1",
    ]
    assert await q("CreatedDate < YESTERDAY") == []
    assert await q("CreatedDate > 2020-01-01T00:00:00Z", "ORDER BY AnnualRevenue DESC") == [
        "Globex",
        "Acme",
        "acme west",
        "Initech_1",
    ]
    assert await q("Name != null", "ORDER BY NumberOfEmployees ASC NULLS LAST, Name DESC") == [
        "Acme",
        "Globex",
        "Initech_1",
        "acme west",
    ]
    assert await q("Name != null", "ORDER BY Industry, Name LIMIT 2 OFFSET 1") == [
        "acme west",
        "Acme",
    ]


async def test_in_compares_as_equality_does_and_never_matches_null(
    api: Api, sim: SimulatorClient
) -> None:
    """Issue 28: what the worker's merged lookups rely on. `IN` is a disjunction of `=`:
    text case-insensitive, ids in their 15- and 18-character forms alike; a null in the list
    matches nothing (while `= null` matches the records without a value)."""
    ids = await sim.seed(
        "Account",
        [{"Name": "O'Neil", "Industry": None}, {"Name": "Back\\slash", "Industry": "Tech"}],
    )

    async def q(where: str) -> list[str]:
        reply = await api.query(f"SELECT Name FROM Account WHERE {where} ORDER BY Name")  # noqa: S608 - building SOQL is the point
        assert reply.status == 200, reply.body
        return names(reply.body)

    assert await q("Name IN ('o\\'NEIL', 'BACK\\\\SLASH', 'nobody')") == ["Back\\slash", "O'Neil"]
    assert await q(f"Id IN ('{ids[0][:15]}', '{ids[1].lower()}')") == ["Back\\slash", "O'Neil"]
    assert await q(f"Id IN ('{ids[0][:15].lower()}')") == []  # 15 characters: case counts
    assert await q("Industry IN (null)") == []
    assert await q("Industry IN (null, 'tech')") == ["Back\\slash"]
    assert await q("Industry = null") == ["O'Neil"]


async def test_select_shape_and_relationships(api: Api, sim: SimulatorClient) -> None:
    [acme] = await sim.seed("Account", [{"Name": "Acme", "Phone": "1"}])
    await sim.seed(
        "Contact",
        [{"LastName": "Lone"}, {"FirstName": "Ann", "LastName": "Lee", "AccountId": acme}],
    )
    reply = await api.query(
        "select id, name, account.name, Account.Phone from contact order by LastName"
    )
    records = reply.body["records"]
    assert reply.body["totalSize"] == 2
    assert reply.body["done"] is True
    assert "nextRecordsUrl" not in reply.body
    assert records[0]["attributes"]["type"] == "Contact"
    assert (
        records[0]["attributes"]["url"]
        == f"/services/data/{VERSION}/sobjects/Contact/{records[0]['Id']}"
    )
    assert list(records[0]) == ["attributes", "Id", "Name", "Account"]
    assert records[0]["Account"] == {
        "attributes": {
            "type": "Account",
            "url": f"/services/data/{VERSION}/sobjects/Account/{acme}",
        },
        "Name": "Acme",
        "Phone": "1",
    }
    assert records[0]["Name"] == "Ann Lee"
    assert records[1]["Account"] is None
    by_parent = await api.query("SELECT Name FROM Contact WHERE Account.Name = 'acme'")
    assert names(by_parent.body) == ["Ann Lee"]
    by_id = await api.query(f"SELECT Name FROM Contact WHERE AccountId = '{acme[:15]}'")  # noqa: S608 - building SOQL is the point
    assert names(by_id.body) == ["Ann Lee"]


async def test_count(api: Api, sim: SimulatorClient) -> None:
    await sim.seed("Lead", [{"LastName": f"L{i}", "Company": "C"} for i in range(7)])
    reply = await api.query("SELECT COUNT() FROM Lead WHERE LastName != 'L0'")
    assert reply.body == {"totalSize": 6, "done": True, "records": []}


async def test_query_all_includes_deleted(api: Api, sim: SimulatorClient) -> None:
    ids = await sim.seed("Account", [{"Name": "keep"}, {"Name": "gone"}])
    await api.delete(f"sobjects/Account/{ids[1]}")
    assert names((await api.query("SELECT Name FROM Account")).body) == ["keep"]
    reply = await api.get(
        "queryAll", params={"q": "SELECT Name, IsDeleted FROM Account ORDER BY Name"}
    )
    assert [(r["Name"], r["IsDeleted"]) for r in reply.body["records"]] == [
        ("gone", True),
        ("keep", False),
    ]


async def test_paging_4500_records(api: Api, sim: SimulatorClient) -> None:
    await sim.seed("Account", [{"Name": f"A{i:05d}"} for i in range(4500)])
    reply = await api.query("SELECT Id, Name FROM Account ORDER BY Name")
    sizes, seen = [], []
    while True:
        assert reply.status == 200, reply.body
        assert reply.body["totalSize"] == 4500
        sizes.append(len(reply.body["records"]))
        seen.extend(names(reply.body))
        if reply.body["done"]:
            assert "nextRecordsUrl" not in reply.body
            break
        next_url = reply.body["nextRecordsUrl"]
        assert next_url.startswith(f"/services/data/{VERSION}/query/01g")
        reply = await api.get(next_url)
    assert sizes == [2000, 2000, 500]
    assert seen == [f"A{i:05d}" for i in range(4500)]


async def test_batch_size_header(api: Api, sim: SimulatorClient) -> None:
    await sim.seed("Account", [{"Name": f"A{i}"} for i in range(450)])
    small = await api.query(
        "SELECT Id FROM Account", headers={"Sforce-Query-Options": "batchSize=50"}
    )
    assert len(small.body["records"]) == 200  # clamped to the 200 minimum
    custom = await api.query(
        "SELECT Id FROM Account", headers={"Sforce-Query-Options": "batchSize=300"}
    )
    assert len(custom.body["records"]) == 300
    rest = await api.get(custom.body["nextRecordsUrl"])
    assert (len(rest.body["records"]), rest.body["done"]) == (150, True)


async def test_query_batch_max_makes_smaller_pages(api: Api, sim: SimulatorClient) -> None:
    await sim.seed("Account", [{"Name": f"A{i:04d}"} for i in range(1100)])
    await sim.set_query_batch_max(500)
    reply = await api.query(
        "SELECT Id, Name FROM Account ORDER BY Name",
        headers={"Sforce-Query-Options": "batchSize=2000"},
    )
    sizes, seen = [], []
    while True:
        assert reply.status == 200, reply.body
        sizes.append(len(reply.body["records"]))
        seen.extend(names(reply.body))
        if reply.body["done"]:
            break
        reply = await api.get(reply.body["nextRecordsUrl"])
    assert sizes == [500, 500, 100]
    assert seen == [f"A{i:04d}" for i in range(1100)]


async def test_invalid_query_locator(api: Api) -> None:
    for cursor in ("01gD0000002HU6KIAW-2000", "garbage"):
        reply = await api.get(f"query/{cursor}")
        assert (reply.status, reply.error_code) == (400, "INVALID_QUERY_LOCATOR")


@pytest.mark.parametrize(
    ("soql", "code", "fragment"),
    [
        ("SELECT Id FROM Foo", "INVALID_TYPE", "sObject type 'Foo' is not supported."),
        ("SELECT Foo FROM Account", "INVALID_FIELD", "No such column 'Foo' on entity 'Account'"),
        ("SELECT Id FROM Account WHERE Bogus__c = 1", "INVALID_FIELD", "No such column 'Bogus__c'"),
        (
            "SELECT Owner.Name FROM Account",
            "INVALID_FIELD",
            "Didn't understand relationship 'Owner'",
        ),
        (
            "SELECT Id FROM Account WHERE AnnualRevenue = '5'",
            "INVALID_FIELD",
            "must be of type currency and should not be enclosed in quotes",
        ),
        (
            "SELECT Id FROM Account WHERE Name = 5",
            "INVALID_FIELD",
            "must be of type string and should be enclosed in quotes",
        ),
        ("SELECT Id FROM Account WHERE CreatedDate > 2024-01-01", "INVALID_FIELD", "dateTime"),
        ("SELECT Id FROM Account WHERE IsDeleted = 'true'", "INVALID_FIELD", "boolean"),
        (
            "SELECT Id FROM Account WHERE Id = 'abc'",
            "INVALID_QUERY_FILTER_OPERATOR",
            "invalid ID field: abc",
        ),
        (
            "SELECT Id FROM Account WHERE Name = 'a' AND Name = 'b' OR Name = 'c'",
            "MALFORMED_QUERY",
            "unexpected token: OR",
        ),
        ("SELECT Id FROM Account GROUP BY Name", "MALFORMED_QUERY", "unexpected token: GROUP"),
        ("SELECT Id, Name FROM Account OFFSET 2001", "NUMBER_OUTSIDE_VALID_RANGE", "2000"),
    ],
)
async def test_query_errors(api: Api, soql: str, code: str, fragment: str) -> None:
    reply = await api.query(soql)
    assert (reply.status, reply.error_code) == (400, code)
    assert fragment in reply.body[0]["message"]


async def test_missing_q(api: Api) -> None:
    assert (await api.get("query")).error_code == "MALFORMED_QUERY"
    assert (await api.get("search")).error_code == "MALFORMED_SEARCH"


# ---- SOSL ----------------------------------------------------------------------------------------
async def test_search(api: Api, sim: SimulatorClient) -> None:
    [acme] = await sim.seed(
        "Account", [{"Name": "Acme-Widgets (EU)", "Phone": "+1 (555) 123-4567"}]
    )
    await sim.seed(
        "Contact",
        [
            {
                "FirstName": "Ann",
                "LastName": "O'Neil",
                "Email": "ann@acme.example",
                "AccountId": acme,
            },
            {"FirstName": "Bob", "LastName": "Stone", "Email": "bob@other.example"},
        ],
    )

    async def search(sosl: str) -> list[tuple[str, str]]:
        reply = await api.get("search", params={"q": sosl})
        assert reply.status == 200, reply.body
        return [
            (r["attributes"]["type"], r.get("Name") or r.get("Id"))
            for r in reply.body["searchRecords"]
        ]

    assert await search("FIND {O\\'Neil} RETURNING Contact(Name)") == [("Contact", "Ann O'Neil")]
    assert await search("FIND {Acme\\-Widgets \\(EU\\)} RETURNING Account(Name)") == [
        ("Account", "Acme-Widgets (EU)")
    ]
    assert await search("FIND {acme*} IN EMAIL FIELDS RETURNING Contact(Name), Account(Name)") == [
        ("Contact", "Ann O'Neil")
    ]
    assert await search("FIND {5551234567} IN PHONE FIELDS RETURNING Account(Name)") == [
        ("Account", "Acme-Widgets (EU)")
    ]
    assert await search('FIND {"ann o\\\'neil"} RETURNING Contact(Name)') == [
        ("Contact", "Ann O'Neil")
    ]
    assert await search('FIND {"neil ann"} RETURNING Contact(Name)') == []
    assert await search(
        "FIND {ann OR bob} RETURNING Contact(Name WHERE LastName != 'Stone' ORDER BY Name)"
    ) == [("Contact", "Ann O'Neil")]
    assert await search("FIND {example AND NOT bob} RETURNING Contact(Name, Account.Name)") == [
        ("Contact", "Ann O'Neil")
    ]
    reply = await api.get("search", params={"q": "FIND {example} RETURNING Contact LIMIT 1"})
    assert list(reply.body["searchRecords"][0]) == ["attributes", "Id"]
    assert len(reply.body["searchRecords"]) == 1


@pytest.mark.parametrize(
    ("sosl", "code"),
    [
        ("FIND {O'Neil} RETURNING Contact", "MALFORMED_SEARCH"),
        ("FIND {a} RETURNING Contact", "MALFORMED_SEARCH"),
        ("FIND {abc} RETURNING Nope", "INVALID_TYPE"),
        ("FIND {abc} RETURNING Contact(Nope)", "INVALID_FIELD"),
        ("FIND {abc} RETURNING Contact(Name WHERE Name = 1)", "INVALID_FIELD"),
    ],
)
async def test_search_errors(api: Api, sosl: str, code: str) -> None:
    reply = await api.get("search", params={"q": sosl})
    assert (reply.status, reply.error_code) == (400, code)
