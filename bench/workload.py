"""A seeded, reproducible Segment workload: the mix of a real B2B site."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

START = datetime(2026, 9, 1, tzinfo=UTC)
PAGES = (
    ["/pricing", "/pricing/enterprise"] * 3
    + [f"/blog/post-{i}" for i in range(8)]
    + [
        "/customers/acme",
        "/case-studies/x",
        "/compare/spreadsheets",
        "/careers",
        "/jobs/123",
        "/",
        "/docs/api",
        "/features",
        "/about",
        # The starter set's second product line.
        "/products/wms",
        "/warehouse/slotting",
    ]
)
CAMPAIGNS = [
    {"source": "google", "medium": "cpc", "name": "fleet-costs", "term": "fleet software"},
    {"source": "newsletter", "medium": "email", "name": "november"},
    {"source": "linkedin", "medium": "paid_social", "name": "ops-leaders"},
    {"source": "partner", "medium": "referral", "name": "marketplace"},
]
REFERRERS = [
    "https://www.google.com/search?q=fleet+tracking",
    "https://www.linkedin.com/feed/",
    "https://www.g2.com/categories/fleet-management",
    "https://blog.partner.example/top-tools",
]
TRACKS = ["Content Downloaded", "Email Link Clicked", "Webinar Attended", "Email Replied"] * 3 + [
    "Demo Requested",
    "Trial Started",
    "Unsubscribed",
    "Signed Up",
]
TITLES = [
    "Owner",
    "VP Sales",
    "Head of Ops",
    "Engineer",
    "Student",
    "Marketing Intern",
    "Director of IT",
    "Analyst",
    "CTO",
    "International Sales Director",
    "Product Owner",
    "Operations Manager",
]
INDUSTRIES = ["Transportation", "Logistics", "Software", "Retail", "Higher Education"]
DOMAINS = [
    "acme.example",
    "gmail.com",
    "trucking-co.com",
    "competitor.example",
    "yahoo.com",
    "widgets.example",
]
COUNTRIES = ["US", "CA", "DE", "FR", "GB"]


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def account_traits(account: int) -> dict[str, Any]:
    """One company's traits, the same in every group call about it (as a CRM or the website
    would send them): accounts are shared by people on different partitions, and a lead's fit
    reads its account, so varying traits would make fit depend on cross-partition order."""
    return {
        "name": f"Co {account}",
        "country": COUNTRIES[account % len(COUNTRIES)],
        "employees": (3, 14, 120, 900)[account % 4],
        "industry": INDUSTRIES[account % len(INDUSTRIES)],
    }


def generate(
    *,
    events: int,
    leads: int,
    seed: int = 7,
    anonymous_share: float = 0.0,
    duplicate_share: float = 0.0,
    malformed_share: float = 0.0,
    days: float = 60,
    recent: bool = False,
    start: datetime | None = None,
    accounts: int = 97,
) -> Iterator[dict[str, Any] | bytes]:
    """Yield `events` Segment calls spread over `leads` people and `days` of event time.

    With `anonymous_share`, that share of people browse anonymously before an identify
    links them. People work for `accounts` companies (person n for company n % accounts).
    Duplicates repeat an earlier messageId; malformed ones are raw bytes.
    """
    rnd = random.Random(seed)
    # `recent` places the workload in the last `days` (impact reports look at recent history).
    # `start` places it exactly (a live stream starts now).
    if start is None:
        start = datetime.now(UTC) - timedelta(days=days) if recent else START
    clock = [start + timedelta(seconds=rnd.uniform(0, days * 86400 * 0.2)) for _ in range(leads)]
    anonymous = [rnd.random() < anonymous_share for _ in range(leads)]
    identified = [not a for a in anonymous]
    recent: list[dict[str, Any]] = []
    for n in range(events):
        if malformed_share and rnd.random() < malformed_share:
            yield rnd.choice([b"{broken", b"[]", b'{"type":"screen","messageId":"x","userId":"u"}'])
            continue
        if duplicate_share and recent and rnd.random() < duplicate_share:
            yield rnd.choice(recent)
            continue
        who = rnd.randrange(leads)
        # Event time mostly moves forward per lead, sometimes a little back (late delivery).
        clock[who] += timedelta(seconds=rnd.expovariate(1 / (days * 86400 / (events / leads) / 2)))
        moment = clock[who] - timedelta(seconds=rnd.uniform(0, 3600) if rnd.random() < 0.05 else 0)
        doc: dict[str, Any] = {"messageId": f"m-{seed}-{n}", "timestamp": _stamp(moment)}
        if identified[who]:
            doc["userId"] = f"u-{who}"
        else:
            doc["anonymousId"] = f"a-{who}"
        roll = rnd.random()
        if roll < 0.62:
            doc.update(type="page", properties={"path": rnd.choice(PAGES)})
            # Two visits in five came from somewhere (a campaign, a referring site), as the
            # buyer journey's channels read them; chosen by position, not by the random
            # stream, so the rest of the workload is what it was before they were added.
            if n % 5 == 0:
                doc["context"] = {"campaign": CAMPAIGNS[n // 5 % len(CAMPAIGNS)]}
            elif n % 5 == 1:
                doc["context"] = {"page": {"referrer": REFERRERS[n // 5 % len(REFERRERS)]}}
        elif roll < 0.87:
            doc.update(type="track", event=rnd.choice(TRACKS), properties={})
        elif roll < 0.96 or not identified[who]:
            if not identified[who] and rnd.random() < 0.5:
                doc["userId"] = f"u-{who}"
                identified[who] = True
            doc.update(
                type="identify",
                traits={
                    "email": f"p{who}@{rnd.choice(DOMAINS)}",
                    "title": rnd.choice(TITLES),
                    "company": {
                        "name": f"Co {who % 97}",
                        "employees": rnd.choice([3, 14, 120, 900]),
                        "country": rnd.choice(COUNTRIES),
                        "industry": rnd.choice(INDUSTRIES),
                    },
                },
            )
        else:
            company = who % accounts
            doc.update(type="group", groupId=f"acct-{company}", traits=account_traits(company))
        if len(recent) < 1000:
            recent.append(doc)
        elif rnd.random() < 0.01:
            recent[rnd.randrange(1000)] = doc
        yield doc


def lead_key(doc: dict[str, Any] | bytes) -> bytes | None:
    """The Kafka key trackers use: userId, else anonymousId."""
    if isinstance(doc, bytes):
        return None
    return str(doc.get("userId") or doc.get("anonymousId")).encode()
