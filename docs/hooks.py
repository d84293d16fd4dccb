"""MkDocs hook: fills each `<!-- reference: NAME -->` with a table made from the code."""

from __future__ import annotations

from typing import Any

from services.runtime.reference_docs import fill


def on_page_markdown(markdown: str, **_: Any) -> str:
    return fill(markdown)
