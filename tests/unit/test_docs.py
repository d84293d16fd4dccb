"""The docs site's reference tables name everything they describe, and the README stays short."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

from services.metrics import Metrics
from services.runtime import reference_docs
from services.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def page(path: str) -> str:
    """A page as the site shows it: the reference markers filled in."""
    return reference_docs.fill((DOCS / path).read_text())


def test_every_setting_has_a_description_and_a_row_on_the_configuration_page() -> None:
    shown = page("reference/configuration.md")
    assert "<!-- reference:" not in shown
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"`LEADSCORE_{name.upper()}`" in shown, name


def test_the_metrics_page_names_every_metric_the_service_exports() -> None:
    metrics = Metrics()
    shown = page("reference/metrics.md")
    # A counter's family is named without the `_total` its samples carry.
    names = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in metrics.registry.collect()
    }
    assert len(names) > 20
    for name in names:
        assert f"`{name}`" in shown, name


def test_the_http_page_names_every_endpoint_of_the_openapi_document() -> None:
    document = json.loads((DOCS / "openapi.json").read_text())
    shown = page("reference/http-api.md")
    for path, operations in document["paths"].items():
        for method in operations:
            assert f"`{method.upper()} {path}`" in shown, (method, path)


def test_the_topics_page_names_every_channel_of_the_asyncapi_document() -> None:
    document = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    shown = page("reference/topics.md")
    for channel in document["channels"].values():
        assert f"`{channel['address']}`" in shown
        for message in channel["messages"]:
            assert f"`{message}`" in shown


def test_the_module_map_names_every_module_and_each_says_what_it_holds() -> None:
    shown = page("architecture/modules.md")
    for package in reference_docs.PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            relative = path.relative_to(ROOT)
            assert f"`{relative}`" in shown, relative
            assert ast.get_docstring(ast.parse(path.read_text())), f"{relative}: no docstring"


def test_a_table_cell_cannot_break_its_row() -> None:
    table = reference_docs._table(("a", "b"), [("x | y", "line\none")])
    assert table.splitlines()[-1] == "| x \\| y | line one |"


def test_every_page_is_in_the_navigation_and_every_entry_has_a_page() -> None:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.Loader)

    def entries(nav: list[object]) -> list[str]:
        found: list[str] = []
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            found += entries(value) if isinstance(value, list) else [str(value)]
        return found

    in_nav = set(entries(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert in_nav == pages


def test_the_readme_is_a_front_door_whose_links_all_lead_somewhere() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    local = [link for link in links if not link.startswith("http")]
    assert len(local) > 20
    for link in local:
        assert (ROOT / link).exists(), link
