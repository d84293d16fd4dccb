"""Loading rule-set documents from YAML or JSON text, safely."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from schemas.ruleset import RuleSetDocument
from scoring_service.rules import CompiledRuleSet, compile_ruleset


def load_document(text: str) -> RuleSetDocument:
    """Parse YAML (a superset of JSON) with the safe loader: no tags that build objects."""
    data: Any = yaml.safe_load(text)
    return RuleSetDocument.model_validate(data)


def starter_document() -> RuleSetDocument:
    """The rule set a fresh install publishes as version 1."""
    text = resources.files("scoring_service").joinpath("starter_ruleset.yaml").read_text("utf-8")
    return load_document(text)


def starter_ruleset(version: int = 1) -> CompiledRuleSet:
    return compile_ruleset(starter_document(), version)
