"""A buying committee assembling over two weeks, as the docs' accounts page tells it.

Haulers Inc, an ideal-profile logistics company, is researching. Chris (head of operations,
the champion) browses anonymously first; Sam, a student intern, reads a lot and counts for
nothing; Tina (CTO, the technical decision-maker) and then Eve (CEO, the economic buyer) join.
"""

from __future__ import annotations

from typing import Any

from tests.helpers.factories import at, group, identify, page, track

ACCOUNT = "acct-haulers"
ACCOUNT_TRAITS = {
    "name": "Haulers Inc",
    "domain": "haulers.example",
    "industry": "Logistics",
    "employees": 40,
    "country": "US",
    "owner": "ae.jordan@seller.example",
}


def person(name: str, title: str) -> dict[str, Any]:
    return {"email": f"{name}@haulers.example", "title": title, "company": {"name": "Haulers Inc"}}


def committee_journey() -> list[dict[str, Any]]:
    """The events in event-time order, each with a fixed messageId."""
    steps: list[dict[str, Any]] = [
        # Day 0: someone at Haulers looks at pricing and a customer story, anonymously.
        page("/pricing", anon="a-chris", when=at(0, hours=1)),
        page("/customers/acme", anon="a-chris", when=at(0, hours=2)),
        # Day 1: a student intern identifies, joins the account and reads a lot.
        identify(person("sam", "Student Intern"), user="u-sam", when=at(1)),
        group(ACCOUNT, ACCOUNT_TRAITS, user="u-sam", when=at(1, hours=1)),
        page("/pricing", user="u-sam", when=at(1, hours=2)),
        page("/pricing/enterprise", user="u-sam", when=at(1, hours=3)),
        page("/blog/post-1", user="u-sam", when=at(1, hours=4)),
        # Day 3: Chris signs up: the anonymous visits become his; he joins the account.
        identify(person("chris", "Head of Operations"), user="u-chris", anon="a-chris", when=at(3)),
        group(ACCOUNT, ACCOUNT_TRAITS, user="u-chris", when=at(3, hours=1)),
        # Day 5: Tina, the CTO, compares and attends a webinar.
        identify(person("tina", "CTO"), user="u-tina", when=at(5)),
        group(ACCOUNT, ACCOUNT_TRAITS, user="u-tina", when=at(5, hours=1)),
        page("/compare/spreadsheets", user="u-tina", when=at(5, hours=2)),
        track("Webinar Attended", user="u-tina", when=at(5, hours=3)),
        # Day 8: Eve, the CEO, looks at pricing: budget owner and champion both engaged.
        identify(person("eve", "CEO"), user="u-eve", when=at(8)),
        group(ACCOUNT, ACCOUNT_TRAITS, user="u-eve", when=at(8, hours=1)),
        page("/pricing", user="u-eve", when=at(8, hours=2)),
        # Days 10-14: the committee keeps going; the account is qualified already.
        track("Webinar Attended", user="u-chris", when=at(10)),
        track("Email Replied", user="u-eve", when=at(12)),
        page("/blog/post-2", user="u-sam", when=at(13)),
        page("/customers/acme", user="u-tina", when=at(14)),
    ]
    for n, doc in enumerate(steps):
        doc["messageId"] = f"committee-{n:02d}"
    return steps
