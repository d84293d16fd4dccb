"""Prometheus metrics, built on an injected registry so each test gets a fresh one."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from scoring_service.effects import Effects
from services.outputs import OUTPUTS

# A batch takes from about a millisecond (one event) to a few seconds (a full batch on a
# busy database); buckets span that range.
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Per event the engine spends microseconds; the database share brings it to tens of them.
EVENT_BUCKETS = (
    0.000005,
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.01,
    0.1,
)
# Sales follow up in minutes to days: 1 min up to a week.
FOLLOW_UP_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)
# Rejection reasons are free text; the metric keeps the first ones seen, the rest are "other".
MAX_REASON_LABELS = 50
SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
# The size classes of `batch_seconds_by_size`: what a batch costs against how big it is
# (a batch's fixed cost shows in the small classes, the cost per event in the large ones).
SIZE_CLASSES = (1, 5, 20, 50, 100, 200, 500, 1000, 2000)


def size_class(events: int) -> str:
    """The label of the smallest class that holds a batch of `events` ("more" past them)."""
    for bound in SIZE_CLASSES:
        if events <= bound:
            return str(bound)
    return "more"


class Metrics:
    """Every metric the service exports, prefixed `leadscore_`."""

    def count_records(self, effects: Effects) -> None:
        """Count committed transition and notification records, of leads and accounts."""
        for output in OUTPUTS:
            counter, fields = getattr(self, output.metric), output.labels
            for record in getattr(effects, output.effect):
                counter.labels(*(record[f] for f in fields)).inc()

    def reason_label(self, reason: str | None) -> str:
        """A bounded label for a free-text reason: normalised, and capped in number."""
        label = " ".join((reason or "none").lower().split())[:40] or "none"
        if label not in self._reasons:
            if len(self._reasons) >= MAX_REASON_LABELS:
                return "other"
            self._reasons.add(label)
        return label

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._reasons: set[str] = set()
        r = self.registry
        self.events = Counter(
            "leadscore_events_consumed_total",
            "Events read from the input topic, by result (scored, duplicate, invalid, bot, "
            "suppressed: a person erased and suppressed).",
            ["result"],
            registry=r,
        )
        self.message_ids_generated = Counter(
            "leadscore_message_ids_generated_total",
            "Events scored that came without a messageId; the intake made one from the "
            "message's bytes, as Segment's tracking API does.",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "leadscore_batch_processing_seconds",
            "Time to score and commit one batch.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_seconds_by_size = Histogram(
            "leadscore_batch_seconds_by_size",
            "Time to score and commit one batch, by its size class (records, at most).",
            ["size"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.event_seconds = Histogram(
            "leadscore_event_processing_seconds",
            "Processing time per event (its batch's time shared over its events).",
            buckets=EVENT_BUCKETS,
            registry=r,
        )
        self.lead_cache = Counter(
            "leadscore_lead_cache_total",
            "Leads a lead transaction loaded: its in-memory copy still current (hit), or read "
            "from the database (miss).",
            ["result"],
            registry=r,
        )
        self.batch_size = Histogram(
            "leadscore_batch_size_events",
            "Records per batch.",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.transitions = Counter(
            "leadscore_transitions_total",
            "Lifecycle transitions emitted.",
            ["from_stage", "to_stage", "reason"],
            registry=r,
        )
        self.account_transitions = Counter(
            "leadscore_account_transitions_total",
            "Account stage changes emitted, by the stage entered.",
            ["to_stage"],
            registry=r,
        )
        self.notifications = Counter(
            "leadscore_notifications_total",
            "Sales notifications emitted.",
            ["type"],
            registry=r,
        )
        self.dlq = Counter(
            "leadscore_dlq_records_total",
            "Messages sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.challenger_events = Counter(
            "leadscore_challenger_events_total",
            "Live events the challenger version scored, and those it failed on (it misses "
            "them; live scoring is not affected).",
            ["result"],
            registry=r,
        )
        self.batch_retries = Counter(
            "leadscore_batch_retries_total",
            "Batches rolled back and retried (lock conflicts, database errors).",
            ["error"],
            registry=r,
        )
        self.log_lost = Counter(
            "leadscore_broker_log_lost_total",
            "Partitions found to have lost their log on the broker (scored again from the "
            "start of the new log).",
            ["topic"],
            registry=r,
        )
        self.loop_errors = Counter(
            "leadscore_loop_errors_total",
            "Errors a long-running loop waited out (broker or database away), by loop and error.",
            ["loop", "error"],
            registry=r,
        )
        self.loop_restarts = Counter(
            "leadscore_loop_restarts_total",
            "Long-running loops restarted after an unexpected error.",
            ["loop"],
            registry=r,
        )
        self.outbox_failed = Counter(
            "leadscore_outbox_failed_total",
            "Outbox records the broker refused for good, set aside (by topic and error).",
            ["topic", "error"],
            registry=r,
        )
        self.outbox_failed_records = Gauge(
            "leadscore_outbox_failed_records",
            "Outbox records set aside as refused by the broker, still retained.",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "leadscore_outbox_pending_records",
            "Outbox records not yet published.",
            registry=r,
        )
        self.outbox_oldest = Gauge(
            "leadscore_outbox_oldest_pending_age_seconds",
            "Age of the oldest unpublished outbox record (0 when none).",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "leadscore_webhook_deliveries_total",
            "Outbound deliveries by endpoint and result (delivered, retried, failed: set "
            "aside after the retry window, skipped: older than what the CRM has).",
            ["endpoint", "result"],
            registry=r,
        )
        self.webhook_seconds = Histogram(
            "leadscore_webhook_request_seconds",
            "Time of one outbound request, connection to answer, by endpoint.",
            ["endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.webhook_pending = Gauge(
            "leadscore_webhook_pending_deliveries",
            "Deliveries waiting, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.webhook_failed = Gauge(
            "leadscore_webhook_failed_deliveries",
            "Deliveries set aside after their retry window, by endpoint (re-deliverable).",
            ["endpoint"],
            registry=r,
        )
        self.webhook_oldest = Gauge(
            "leadscore_webhook_oldest_pending_age_seconds",
            "Age of an endpoint's oldest waiting delivery (0 when none).",
            ["endpoint"],
            registry=r,
        )
        self.outbox_published = Counter(
            "leadscore_outbox_published_total",
            "Records the relay published, by topic.",
            ["topic"],
            registry=r,
        )
        self.outbox_errors = Counter(
            "leadscore_outbox_publish_errors_total",
            "Failed publish attempts of the relay.",
            registry=r,
        )
        self.lag = Gauge(
            "leadscore_consumer_lag_records",
            "Records behind the end of each input partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.feedback = Counter(
            "leadscore_feedback_total",
            "Sales feedback by outcome and result (applied, refused, unknown_lead, duplicate).",
            ["outcome", "result"],
            registry=r,
        )
        self.rejections = Counter(
            "leadscore_rejections_total",
            "Leads sales rejected, by reason.",
            ["reason"],
            registry=r,
        )
        self.sla_breaches = Counter(
            "leadscore_sla_breaches_total",
            "Follow-up deadlines missed, by stage.",
            ["stage"],
            registry=r,
        )
        self.follow_up_seconds = Histogram(
            "leadscore_follow_up_seconds",
            "Time from a handoff to sales' first feedback, by stage.",
            ["stage"],
            buckets=FOLLOW_UP_BUCKETS,
            registry=r,
        )
        self.person_requests = Counter(
            "leadscore_person_requests_total",
            "Requests about a person's data carried out, by kind (erase, export, unsuppress) "
            "and status (done, failed).",
            ["kind", "status"],
            registry=r,
        )
        self.person_requests_waiting = Gauge(
            "leadscore_person_requests_waiting",
            "Erasure requests received and not yet carried out.",
            registry=r,
        )
        self.scheduled_trainings = Counter(
            "leadscore_scheduled_trainings_total",
            "Trainings the retraining schedule ran, by result (challenging: published and "
            "started as the challenger; published: a person's challenger runs, so only "
            "published; too_few_outcomes; failed; database_unavailable: the run waits for "
            "the database).",
            ["result"],
            registry=r,
        )
        self.open_handoffs = Gauge(
            "leadscore_open_handoffs",
            "Handoffs awaiting a response from sales.",
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "leadscore_assigned_partitions",
            "Input partitions this instance consumes.",
            registry=r,
        )
        self.ruleset_version = Gauge(
            "leadscore_active_ruleset_version",
            "Rule-set version this instance scores with.",
            registry=r,
        )
        self.ruleset_unusable = Gauge(
            "leadscore_active_ruleset_unusable",
            "1 while the active rule-set version cannot run here (events wait unconsumed "
            "until an admin activates another version), else 0.",
            registry=r,
        )


def observe_many(histogram: Histogram, amount: float, times: int) -> None:
    """`times` observations of one value, at the cost of one: a batch's time shared over its
    events is the same value for each, and observing them one by one cost about 2% of the
    service's CPU at full speed. Reaches into prometheus_client's Histogram (pinned in
    pyproject.toml; tests/unit/test_metrics.py compares it with `observe`)."""
    if times <= 0:
        return
    histogram._sum.inc(amount * times)
    histogram._buckets[bisect_left(histogram._upper_bounds, amount)].inc(times)
