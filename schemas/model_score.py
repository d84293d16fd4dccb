"""A learned score's model, as data: the features it reads, their scaling and weights, the
calibration that turns its log-odds into a probability, and how it was trained.

A model is kept in a rule-set version like rules are (published, compared, activated and
rolled back as a version), so it must be checkable on its own: every number finite, every
feature one the engine can compute from a lead, at most MAX_FEATURES of them. Problems are
reported with where they are (`features[3] (rule:webinar): ...`), as a rule set's are.

Features (scoring_service/model_score.py computes them, as of the lead's clock):

  rule:<id>          an engagement rule's decayed hits (its decayed points over its points)
  fit:<id>           1 when the lead matches a fit rule, else 0
  journey:<phase>    1 when the lead is in that buyer-journey phase
  first_touch:<ch>   1 when the lead's first touch came through that channel
  last_touch:<ch>    1 when its latest did
  tenure_days        days from its first touch to its latest event
  account:coverage   its account's buying-committee coverage (points), as its latest
                     event left it (0 without an account)
  account:score      its account's total score, likewise
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
MAX_FEATURES = 300
_FEATURE = re.compile(
    r"^(?:(?:rule|fit|journey):[a-z0-9][a-z0-9_.-]{0,99}"
    r"|(?:first_touch|last_touch):[a-z0-9][a-z0-9_ ./-]{0,99}"
    r"|tenure_days|account:coverage|account:score)$"
)
# Beyond these a coefficient says more about a numerical accident than about leads.
MAX_WEIGHT = 1e3
MAX_MEAN = 1e9


class Feature(BaseModel):
    """One input: its value is scaled as (x - mean) / scale, then weighted."""

    model_config = MODEL_CONFIG

    name: Annotated[str, Field(max_length=120, pattern=_FEATURE.pattern)]
    weight: float = Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT)
    mean: float = Field(default=0.0, ge=-MAX_MEAN, le=MAX_MEAN)
    scale: float = Field(default=1.0, gt=0, le=MAX_MEAN)


class Calibration(BaseModel):
    """Platt scaling: probability = 1 / (1 + exp(-(slope * logit + offset)))."""

    model_config = MODEL_CONFIG

    slope: float = Field(default=1.0, gt=0, le=MAX_WEIGHT)
    offset: float = Field(default=0.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT)


class CalibrationRow(BaseModel):
    """One decile of the held-out leads by predicted probability."""

    model_config = MODEL_CONFIG

    decile: int = Field(ge=1, le=10)
    leads: int = Field(ge=0)
    predicted: float = Field(ge=0, le=1)
    observed: float = Field(ge=0, le=1)


class Training(BaseModel):
    """Where the model came from: the outcomes it learned from and how it did on the most
    recent ones, which it did not see."""

    model_config = MODEL_CONFIG

    trained_at: datetime
    window_from: datetime | None = None
    window_to: datetime | None = None
    samples: int = Field(ge=0)
    positives: int = Field(ge=0)
    held_out: int = Field(ge=0)
    auc: float | None = Field(default=None, ge=0, le=1)
    auc_rules: float | None = Field(default=None, ge=0, le=1)
    log_loss: float | None = Field(default=None, ge=0)
    calibration_error: float | None = Field(default=None, ge=0, le=1)
    calibration: list[CalibrationRow] = Field(default_factory=list, max_length=10)
    top_bands_share_of_conversions: float | None = Field(default=None, ge=0, le=1)


class ModelSpec(BaseModel):
    """A regularised logistic regression of the chosen outcome within a horizon."""

    model_config = MODEL_CONFIG

    outcome: Literal["won", "qualified"] = "won"
    horizon_days: float = Field(default=90, gt=0, le=730)
    intercept: float = Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT)
    features: list[Feature] = Field(max_length=MAX_FEATURES)
    calibration: Calibration = Calibration()
    # The least points (0-100) for grades A, B and C; below C is D.
    bands: tuple[float, float, float] = (60.0, 35.0, 15.0)
    training: Training | None = None

    @model_validator(mode="after")
    def _unique_and_ordered(self) -> ModelSpec:
        seen: set[str] = set()
        for index, feature in enumerate(self.features):
            if feature.name in seen:
                raise ValueError(f"features[{index}] ({feature.name}): listed twice")
            seen.add(feature.name)
        a, b, c = self.bands
        if not 100 >= a >= b >= c >= 0:
            raise ValueError("bands lists the least points for A, B, C: from high to low, 0-100")
        return self

    def problems_against(
        self,
        *,
        rules: Collection[str],
        fit_rules: Collection[str],
        phases: Collection[str],
        accounts: bool = True,
    ) -> list[str]:
        """What the model reads that the rule set it is published in does not have, each
        located: a rule or fit rule it does not define, a phase its journey lacks, an
        account when it scores none."""
        problems = []
        for index, feature in enumerate(self.features):
            kind, _, name = feature.name.partition(":")
            where = f"features[{index}] ({feature.name})"
            if kind == "rule" and name not in rules:
                problems.append(f"{where}: the rule set has no engagement rule {name!r}")
            elif kind == "fit" and name not in fit_rules:
                problems.append(f"{where}: the rule set has no fit rule {name!r}")
            elif kind == "journey" and name not in phases:
                problems.append(f"{where}: the buyer journey has no phase {name!r}")
            elif kind == "account" and not accounts:
                problems.append(f"{where}: the rule set scores no accounts")
        return problems
