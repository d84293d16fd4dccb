"""Reading rule-set documents from YAML or JSON text, safely, with errors people can act on."""

from __future__ import annotations

import difflib
import re
import types
import typing
from functools import cache
from importlib import resources
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from schemas.rule_set import RuleSetDocument
from scoring_service.rules import CompiledRuleSet, compile_ruleset

MAX_DOCUMENT_BYTES = 1024 * 1024
# A rule set is a few levels deep (rules[i].when.properties.x.in[j]); 32 is generous.
MAX_NESTING = 32


class RuleSetInvalid(ValueError):
    """Every problem found in a document, each with where it is (`rules[3].when.path`)."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['loc']}: {p['msg']}" for p in problems))
        self.problems = problems


def location(loc: tuple[int | str, ...]) -> str:
    """('rules', 3, 'when', 'path') -> 'rules[3].when.path'."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "document"


def _check_yaml_events(text: str) -> None:
    """Refuse what safe_load would accept but a rule set never needs: explicit tags, anchors
    and aliases (the "billion laughs" expansion), and deep nesting."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise RuleSetInvalid([{"loc": "document", "msg": "YAML aliases are not allowed"}])
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise RuleSetInvalid([{"loc": "document", "msg": "YAML anchors are not allowed"}])
        tag = getattr(event, "tag", None)
        if tag is not None and not getattr(event, "implicit", True):
            raise RuleSetInvalid([{"loc": "document", "msg": f"YAML tag {tag!r} is not allowed"}])
        if isinstance(event, yaml.CollectionStartEvent):
            if tag is not None and not event.implicit:
                raise RuleSetInvalid(
                    [{"loc": "document", "msg": f"YAML tag {tag!r} is not allowed"}]
                )
            depth += 1
            if depth > MAX_NESTING:
                raise RuleSetInvalid(
                    [{"loc": "document", "msg": f"nested deeper than {MAX_NESTING} levels"}]
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def parse_data(text: str | bytes) -> Any:
    """YAML (a superset of JSON) to plain data, or RuleSetInvalid."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise RuleSetInvalid(
            [{"loc": "document", "msg": f"larger than {MAX_DOCUMENT_BYTES} bytes"}]
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RuleSetInvalid([{"loc": "document", "msg": "not UTF-8 text"}]) from exc
    try:
        _check_yaml_events(text)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleSetInvalid(
            [{"loc": "document", "msg": f"not valid YAML or JSON: {exc}"}]
        ) from exc


def validate_data(data: Any) -> RuleSetDocument:
    if not isinstance(data, dict):
        raise RuleSetInvalid([{"loc": "document", "msg": "a rule set is an object (a mapping)"}])
    try:
        return RuleSetDocument.model_validate(data)
    except ValidationError as exc:
        duplicates = _duplicate_ids(data.get("rules"))
        problems = [
            {"loc": location(err["loc"]), "msg": _in_words(err)}
            for err in exc.errors()
            # The document's own check says it only once the rest is valid; said below.
            if not (duplicates and "duplicate rule id" in err["msg"])
        ]
        raise RuleSetInvalid(problems + duplicates) from exc


def _in_words(err: Any) -> str:
    """pydantic's message, with the nearest known field name for a misspelt one."""
    if err["type"] != "extra_forbidden" or not err["loc"]:
        return str(err["msg"]).removeprefix("Value error, ")
    name = str(err["loc"][-1])
    nearest = difflib.get_close_matches(name, _field_names(), n=1, cutoff=0.7)
    hint = f"; did you mean '{nearest[0]}'?" if nearest else ""
    return f"'{name}' is not a field here{hint}"


@cache
def _field_names() -> tuple[str, ...]:
    """Every field name a rule-set document can use, at any depth."""
    names: set[str] = set()
    seen: set[type] = set()

    def walk(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation in seen:
                return
            seen.add(annotation)
            for name, info in annotation.model_fields.items():
                names.add(info.alias or name)
                walk(info.annotation)
        for arg in typing.get_args(annotation):
            walk(arg)
        if isinstance(annotation, types.UnionType):
            for arg in annotation.__args__:
                walk(arg)

    walk(RuleSetDocument)
    return tuple(sorted(names))


def _duplicate_ids(rules: Any) -> list[dict[str, str]]:
    """Rule ids used twice, found in the raw document: pydantic checks the whole document only
    once every field is valid, and the author wants every problem in one answer."""
    if not isinstance(rules, list):
        return []
    first: dict[str, int] = {}
    problems = []
    for index, rule in enumerate(rules):
        rule_id = rule.get("id") if isinstance(rule, dict) else None
        if not isinstance(rule_id, str):
            continue
        if rule_id in first:
            problems.append(
                {
                    "loc": f"rules[{index}].id",
                    "msg": f"duplicate rule id {rule_id!r} (first used at rules[{first[rule_id]}])",
                }
            )
        else:
            first[rule_id] = index
    return problems


def load_document(text: str | bytes) -> RuleSetDocument:
    """Parse and validate a rule set; RuleSetInvalid lists every problem."""
    return validate_data(parse_data(text))


def starter_text() -> str:
    """The starter rule set's file, with the comments that say why each rule exists."""
    return resources.files("scoring_service").joinpath("starter_ruleset.yaml").read_text("utf-8")


def starter_document() -> RuleSetDocument:
    """The rule set a fresh install publishes as version 1."""
    return load_document(starter_text())


def starter_ruleset(version: int = 1) -> CompiledRuleSet:
    return compile_ruleset(starter_document(), version)


def problem_lines(text: str, problems: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Each problem with `line` and `column`: 1-based, where the YAML the location names
    starts (or the nearest enclosing node that exists), where a syntax error was found, or
    None. For editors and the command line, which show problems where they are."""
    lines: dict[str, tuple[int, int]] = {}
    syntax_line: tuple[int, int] | None = None
    try:
        _check_yaml_events(text)  # no aliases: walking shared nodes could never end
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RuleSetInvalid:
        root = None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        syntax_line = (mark.line + 1, mark.column + 1) if mark is not None else None
        root = None
    except yaml.YAMLError:
        root = None
    if root is not None:
        _node_lines(root, "", lines)
    located: list[dict[str, Any]] = []
    for problem in problems:
        loc = problem["loc"]
        line = syntax_line if loc == "document" else None
        while line is None and loc:
            line = lines.get(loc)
            parent = _PARENT.sub("", loc)
            # A top-level name has no parent: stop there (the document has no line).
            loc = parent if parent != loc else ""
        located.append(
            {**problem, "line": line[0] if line else None, "column": line[1] if line else None}
        )
    return located


_PARENT = re.compile(r"(\.[^.\[]*|\[\d+\])$")


def _node_lines(node: yaml.Node, path: str, lines: dict[str, tuple[int, int]]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = f"{path}.{key.value}" if path else str(key.value)
            lines[name] = (key.start_mark.line + 1, key.start_mark.column + 1)
            _node_lines(value, name, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            name = f"{path}[{index}]"
            lines[name] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _node_lines(item, name, lines)
