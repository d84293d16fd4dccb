"""Sample journeys the console offers for a simulation, next to pasting one's own."""

from __future__ import annotations

from typing import Any


def _journey(user: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Segment messages for one person, a minute apart, each with its own messageId."""
    return [
        {
            "messageId": f"{user}-{n}",
            "userId": user,
            "timestamp": f"2026-11-20T09:{n:02d}:00Z",
            **step,
        }
        for n, step in enumerate(steps)
    ]


_COMPANY = {"name": "Trucking Co", "industry": "Transportation", "employees": 40, "country": "US"}

JOURNEYS: dict[str, list[dict[str, Any]]] = {
    "Owner of a trucking firm: pricing, then a demo request": _journey(
        "sample-owner",
        [
            {
                "type": "identify",
                "traits": {"email": "dana@trucking-co.com", "title": "Owner", "company": _COMPANY},
            },
            {"type": "page", "properties": {"path": "/pricing"}},
            {"type": "page", "properties": {"path": "/customers/fleet"}},
            {"type": "track", "event": "Demo Requested", "properties": {"form": "header"}},
        ],
    ),
    "Operations manager reading around, slowly warming up": _journey(
        "sample-reader",
        [
            {
                "type": "identify",
                "traits": {
                    "email": "lee@haulage.example",
                    "title": "Ops Manager",
                    "company": _COMPANY,
                },
            },
            {"type": "page", "properties": {"path": "/blog/routing"}},
            {"type": "page", "properties": {"path": "/compare/spreadsheets"}},
            {"type": "page", "properties": {"path": "/pricing"}},
            {"type": "page", "properties": {"path": "/pricing/enterprise"}},
            {"type": "page", "properties": {"path": "/case-studies/cold-chain"}},
        ],
    ),
    "Job seeker with a personal address": _journey(
        "sample-candidate",
        [
            {"type": "identify", "traits": {"email": "sam@gmail.com", "title": "Student"}},
            {"type": "page", "properties": {"path": "/careers"}},
            {"type": "page", "properties": {"path": "/pricing"}},
        ],
    ),
}
