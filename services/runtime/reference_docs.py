"""The docs site's reference tables, made from the code they describe.

The configuration table comes from `Settings`' field descriptions, the metrics from the
registry, the endpoints from the OpenAPI document, the topics from the AsyncAPI document, and
the module map from each module's docstring, so none of them can fall behind the code.
`docs/hooks.py` puts each table where a page says `<!-- reference: NAME -->`; the tests check
that each table names everything it should.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.metrics import Metrics
from services.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "scoring_service", "stage_router", "services")


def _cell(text: str) -> str:
    """Text fit for one cell of a Markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return "empty"
    return f"`{value}`"


def configuration() -> str:
    """Every setting: its environment variable, its default and what it does."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = [
        (f"`{prefix}{name.upper()}`", _default(field.default), field.description or "")
        for name, field in Settings.model_fields.items()
    ]
    return _table(("variable", "default", "meaning"), rows)


def metrics() -> str:
    """Every metric the service exports, with its type, labels and help text."""
    registry = CollectorRegistry()
    Metrics(registry)
    rows = []
    for family in registry.collect():
        collector = registry._names_to_collectors[family.name]  # no public way to it
        labels = ", ".join(f"`{label}`" for label in getattr(collector, "_labelnames", ()))
        name = family.name + ("_total" if family.type == "counter" else "")
        rows.append((f"`{name}`", family.type, labels or "-", family.documentation))
    return _table(("metric", "type", "labels", "what it counts"), sorted(rows))


def endpoints(openapi: dict[str, Any] | None = None) -> str:
    """Every HTTP endpoint in the OpenAPI document, by path."""
    document = openapi or json.loads((PROJECT_ROOT / "docs/openapi.json").read_text())
    rows = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            summary = operation.get("description") or operation.get("summary") or ""
            first = summary.strip().split("\n\n")[0]
            rows.append((f"`{method.upper()} {path}`", first))
    return _table(("endpoint", "what it does"), rows)


def topics(asyncapi: dict[str, Any] | None = None) -> str:
    """Every topic in the AsyncAPI document, with its direction and its messages."""
    document = asyncapi or yaml.safe_load((PROJECT_ROOT / "docs/asyncapi.yaml").read_text())
    directions = {}
    for operation in document.get("operations", {}).values():
        channel = operation["channel"]["$ref"].rsplit("/", 1)[-1]
        directions[channel] = "in" if operation["action"] == "receive" else "out"
    rows = []
    for name, channel in document["channels"].items():
        messages = ", ".join(f"`{message}`" for message in channel.get("messages", {}))
        rows.append(
            (
                f"`{channel['address']}`",
                directions.get(name, "-"),
                messages,
                channel.get("description", ""),
            )
        )
    return _table(("topic (default name)", "direction", "messages", "what"), rows)


def modules(root: Path = PROJECT_ROOT) -> str:
    """Every module of the four packages with the first sentence of its docstring."""
    rows = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            first = docstring.split("\n\n")[0]
            rows.append((f"`{path.relative_to(root)}`", first or "-"))
    return _table(("module", "what is in it"), rows)


TABLES: dict[str, Callable[[], str]] = {
    "configuration": configuration,
    "metrics": metrics,
    "endpoints": endpoints,
    "topics": topics,
    "modules": modules,
}


def fill(markdown: str) -> str:
    """A page with each `<!-- reference: NAME -->` replaced by its table."""
    for name, table in TABLES.items():
        marker = f"<!-- reference: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, table())
    return markdown


def person_export_schema() -> str:
    """The JSON Schema of a person's export, as published in docs/reference/."""
    from schemas.api import PersonExport

    return json.dumps(PersonExport.model_json_schema(mode="serialization"), indent=2) + "\n"


if __name__ == "__main__":
    # python -m services.runtime.reference_docs > docs/reference/person-export.schema.json
    print(person_export_schema(), end="")
