"""Draws a soak's per-minute p99 latency and service RSS as one small SVG, for the docs
(docs/performance/soak-20261203.svg is one): `python -m bench.soak_chart
bench/profiles/soak-<time>.json` writes `...json` -> `...svg`."""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path
from typing import Any

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 56, 28, 36


def polyline(points: list[tuple[float, float]], colour: str) -> str:
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>'


def chart(result: dict[str, Any]) -> str:
    minutes = [(m["minute"], m["p99"]) for m in result["latency_ms"]["per_minute"]]
    rss = [(m, mb) for m, mb in result.get("rss_mb_per_minute", [])]
    last = max([m for m, _ in minutes] + [m for m, _ in rss] + [1])
    top_ms = max(ms for _, ms in minutes) * 1.15
    top_mb = max([mb for _, mb in rss] + [1]) * 1.15
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(minute: float) -> float:
        return LEFT + plot_w * minute / last

    def y(value: float, top: float) -> float:
        return TOP + plot_h * (1 - value / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="16" font-size="12">{escape(soak_title(result))}</text>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" '
        'stroke="#999"/>',
    ]
    for fraction in (0, 0.5, 1):
        ms, mb = top_ms * fraction / 1.15, top_mb * fraction / 1.15
        parts.append(
            f'<text x="{LEFT - 6}" y="{y(ms, top_ms) + 4:.1f}" text-anchor="end" '
            f'fill="#1f6fb2">{ms:.0f} ms</text>'
        )
        parts.append(
            f'<text x="{LEFT + plot_w + 6}" y="{y(mb, top_mb) + 4:.1f}" fill="#c0392b">'
            f"{mb:.0f} MB</text>"
        )
    for minute in range(0, int(last) + 1, 10):
        parts.append(
            f'<text x="{x(minute):.1f}" y="{HEIGHT - 18}" text-anchor="middle">{minute}</text>'
        )
    parts.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">'
        "minute of the steady load</text>"
    )
    parts.append(polyline([(x(m), y(ms, top_ms)) for m, ms in minutes], "#1f6fb2"))
    if rss:
        parts.append(polyline([(x(m), y(mb, top_mb)) for m, mb in rss], "#c0392b"))
    parts.append(
        f'<text x="{LEFT + 8}" y="{TOP + 12}" fill="#1f6fb2">p99 latency per minute</text>'
        f'<text x="{LEFT + 160}" y="{TOP + 12}" fill="#c0392b">service RSS</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def soak_title(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    return (
        f"make soak {result.get('when', '')}: {lat['offered_events_per_s']:,.0f} events/s for "
        f"{lat['seconds'] / 60:.0f} min"
    )


def main() -> None:
    source = Path(sys.argv[1])
    target = source.with_suffix(".svg")
    target.write_text(chart(json.loads(source.read_text())))
    print(target)


if __name__ == "__main__":
    main()
