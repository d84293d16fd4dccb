"""Several scores per lead (docs/concepts/scores.md). Pure: no I/O.

A lead has the default score and any named ones the rule set declares (one per product
line, say). Every rule names the scores it counts for; a hit is kept once, as the rule's
signal, and each score is the sum of the signals of the rules that count for it, so a
score's explanation adds up to it exactly as the default one's does. The default score is
also kept as a running sum on the lead (`LeadState.fit` / `engagement`), which keeps a rule
set with one score exactly as fast and as it was.

Which score moves a lead to a stage is the stage's qualification: `any` score over its own
threshold, one named score, or an expression (schemas.rule_set.parse_qualification).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from schemas.rule_set import DEFAULT_SCORE, Grades, Qualification
from scoring_service.model_score import CompiledModel
from stage_router.lifecycle import SCORED_STAGES

# Adjustments an admin makes are kept as signals of their own, one per score, so the score
# they changed still adds up from its signals and decays like the rest of its engagement.
ADJUSTMENT_PREFIX: Final = "adjust:"
GRADE_LETTERS: Final = ("A", "B", "C", "D")
K = TypeVar("K", int, str)

# Stages a score qualifies a lead for, highest first.
QUALIFIED_STAGES: Final = SCORED_STAGES[::-1]


@dataclass(frozen=True, slots=True)
class CompiledScore:
    name: str
    mql: float
    sal: float
    sql: float | None
    # The queue a lead goes to when this score qualified it (None: the routing rules').
    queue: str | None
    fit_bands: tuple[float, float, float] | None
    engagement_bands: tuple[float, float] | None
    # A learned score's model (scoring_service/model_score.py); None: the rules count.
    model: CompiledModel | None = None

    def threshold(self, stage: str) -> float | None:
        return self.mql if stage == "mql" else self.sal if stage == "sal" else self.sql

    def label(self, fit: float, engagement: float) -> str | None:
        """The grade and level (A1 ... D3), when the score has bands; a model score's grade
        (A ... D) by its points."""
        if self.model is not None:
            return self.model.label(fit + engagement)
        if self.fit_bands is None or self.engagement_bands is None:
            return None
        letter = "D"
        for grade, least in zip(GRADE_LETTERS, self.fit_bands, strict=False):  # "D" below all
            if fit >= least:
                letter = grade
                break
        level = (
            1
            if engagement >= self.engagement_bands[0]
            else (2 if engagement >= self.engagement_bands[1] else 3)
        )
        return f"{letter}{level}"


# (the scores' totals by name, the stage) -> (holds, the scores that made it hold)
Qualifier = Callable[[Mapping[str, float], str], tuple[bool, list[str]]]


def compile_qualification(tree: Qualification, scores: Mapping[str, CompiledScore]) -> Qualifier:
    """A parsed qualification expression as a function of the scores' totals."""
    kind = tree[0]
    if kind == "score":
        name, op, number = tree[1], tree[2], tree[3]
        score = scores[name]

        def atom(totals: Mapping[str, float], stage: str) -> tuple[bool, list[str]]:
            total = totals[name]
            if op is None:
                least = score.threshold(stage)
                holds = least is not None and total >= least
            else:
                holds = total >= number if op == ">=" else total > number
            return holds, [name] if holds else []

        return atom
    parts = tuple(compile_qualification(part, scores) for part in tree[1])
    need_all = kind == "and"

    def combined(totals: Mapping[str, float], stage: str) -> tuple[bool, list[str]]:
        names: list[str] = []
        verdicts = []
        for part in parts:
            holds, by = part(totals, stage)
            verdicts.append(holds)
            for n in by:
                if n not in names:
                    names.append(n)
        holds = all(verdicts) if need_all else any(verdicts)
        return holds, names if holds else []

    return combined


def any_score(names: Sequence[str]) -> Qualification:
    return ("or", tuple(("score", name, None, None) for name in names))


@dataclass(frozen=True, slots=True)
class ScoreBook:
    """A rule set's scores, which rules count for which, and how each stage qualifies."""

    scores: tuple[CompiledScore, ...]
    by_name: Mapping[str, CompiledScore]
    # Per stage (mql, sal, sql): who qualifies a lead for it.
    qualify: Mapping[str, Qualifier]
    # Rule id -> the scores it counts for (every rule of the rule set is listed).
    rule_scores: Mapping[str, tuple[str, ...]]
    # Every stage qualified by `any` score (the default): reached() takes a shortcut.
    any_everywhere: bool = False
    # The learned scores, by name: kept up on every counted hit.
    learned: tuple[tuple[str, CompiledModel], ...] = ()
    # What a rule adds to the learned scores, looked up once per hit or matching fit rule:
    # an engagement rule's weight per point earned, by the model's slot in
    # `LeadState.model_part`; a fit rule's weight, by the score's name in
    # `LeadState.fit_by`.
    # (dicts, not Mappings: the compiled core looks them up without a method call)
    model_gains: dict[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    model_fit: dict[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)

    @property
    def several(self) -> bool:
        return len(self.scores) > 1

    @property
    def listed(self) -> bool:
        """Are scores and labels kept on the lead for lists (several scores, or grades)?"""
        return self.several or any(score.fit_bands is not None for score in self.scores)

    def scores_of(self, signal_id: str) -> tuple[str, ...]:
        """The scores a signal counts for: its rule's, an adjustment's own score; a rule no
        longer in the rule set counted for the default score (as it did when it was)."""
        named = self.rule_scores.get(signal_id)
        if named is not None:
            return named
        if signal_id.startswith(ADJUSTMENT_PREFIX):
            return (signal_id[len(ADJUSTMENT_PREFIX) :],)
        return (DEFAULT_SCORE,)

    def reached(self, totals: Mapping[str, float]) -> tuple[str | None, list[str]]:
        """The highest stage the scores qualify a lead for, and the scores that did."""
        if self.any_everywhere:
            # The usual qualification, without walking expressions: the highest stage any
            # score reaches by its own thresholds, and the scores that reach it.
            best = -1
            names: list[str] = []
            for score in self.scores:
                total = totals[score.name]
                if total < score.mql:
                    continue
                sql = score.sql
                rank = 3 if sql is not None and total >= sql else 2 if total >= score.sal else 1
                if rank > best:
                    best, names = rank, [score.name]
                elif rank == best:
                    names.append(score.name)
            return (QUALIFIED_STAGES[3 - best] if best > 0 else None), names
        for stage in QUALIFIED_STAGES:
            holds, by = self.qualify[stage](totals, stage)
            if holds:
                return stage, by
        return None, []

    def qualifying(self, totals: Mapping[str, float], stage: str) -> list[str]:
        """The scores at or over their own threshold for `stage`."""
        names = []
        for score in self.scores:
            least = score.threshold(stage)
            if least is not None and totals[score.name] >= least:
                names.append(score.name)
        return names


def _bands(grades: Grades | None) -> tuple[Any, Any]:
    return (grades.fit, grades.engagement) if grades is not None else (None, None)


def compile_scores(document: Any) -> ScoreBook:
    """The scores of a validated `RuleSetDocument`."""
    from schemas.rule_set import parse_qualification

    names = document.score_names()
    points = {rule.id: rule.points for rule in document.rules if rule.category == "engagement"}
    fit_bands, engagement_bands = _bands(document.grades)
    compiled = [
        CompiledScore(
            name=DEFAULT_SCORE,
            mql=document.thresholds.mql,
            sal=document.thresholds.sal,
            sql=document.thresholds.sql,
            queue=None,
            fit_bands=fit_bands,
            engagement_bands=engagement_bands,
        )
    ]
    for name, spec in document.scores.items():
        fit_bands, engagement_bands = _bands(spec.grades)
        compiled.append(
            CompiledScore(
                name=name,
                mql=spec.thresholds.mql,
                sal=spec.thresholds.sal,
                sql=spec.thresholds.sql,
                queue=spec.queue,
                fit_bands=fit_bands,
                engagement_bands=engagement_bands,
                model=(
                    CompiledModel(spec.model, points, slot=sum(1 for c in compiled if c.model))
                    if spec.model is not None
                    else None
                ),
            )
        )
    by_name = {score.name: score for score in compiled}
    qualify = {}
    trees = []
    for stage in QUALIFIED_STAGES:
        text = document.qualify.get(stage)
        tree = parse_qualification(text, names) if text else any_score(names)
        trees.append(tree)
        qualify[stage] = compile_qualification(tree, by_name)
    return ScoreBook(
        scores=tuple(compiled),
        by_name=by_name,
        qualify=qualify,
        rule_scores={rule.id: tuple(rule.scores or (DEFAULT_SCORE,)) for rule in document.rules},
        any_everywhere=all(tree == any_score(names) for tree in trees),
        learned=tuple((s.name, s.model) for s in compiled if s.model is not None),
        model_gains=_by_rule((s.model.slot, s.model.rule_gain) for s in compiled if s.model),
        model_fit=_by_rule((s.name, s.model.by_fit) for s in compiled if s.model),
    )


def _by_rule(
    tables: Iterable[tuple[K, Mapping[str, float]]],
) -> dict[str, tuple[tuple[K, float], ...]]:
    """Each model's weights by rule, turned around: rule id -> (model, weight) pairs."""
    by_rule: dict[str, list[tuple[K, float]]] = {}
    for key, weights in tables:
        for rule_id, weight in weights.items():
            by_rule.setdefault(rule_id, []).append((key, weight))
    return {rule_id: tuple(pairs) for rule_id, pairs in by_rule.items()}
