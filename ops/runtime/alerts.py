"""Alerts on jobs, from the run ledger: once per incident, and a notice when it recovers.

Two rules per job: more than ALERT_FAILURE_RATIO of its finished runs in the last
ALERT_WINDOW failed (with at least ALERT_MIN_RUNS runs), or no success within twice
its expected interval. An incident is a row in AlertIncident (at most one open per
job and rule), so a rule that keeps tripping notifies once. Notices go to the
backends in ALERT_BACKENDS (a log line and an email to ADMINS by default); a
backend is a class with `send(*, incident, event)`, event being "opened" or "resolved".

Rules are evaluated after each run of the job, and for every job by the periodic
task `ops.alerts_evaluate` (a job that stopped running cannot evaluate itself).
"No recent success" is the job status's "late" (ops.runtime.status).

Packages add rules about what they own (a dependency down too long, dead letters piling
up, payments that need a person) with `alert_rule`; `ops.alerts_evaluate` checks them
too, each an incident of its own named after the rule. Every notice says what to do next.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from django.conf import settings
from django.core.mail import mail_admins
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.module_loading import import_string

from ops.runtime.models import AlertIncident, DeadLetter, JobRun
from ops.runtime.registry import all_jobs
from ops.runtime.status import JobStatus, job_statuses

log = logging.getLogger("ops.runtime.alerts")


# What a person does about an incident of a job's own rules.
_JOB_NEXT_STEPS = {
    AlertIncident.Kind.FAILURE_RATIO: (
        "read the failed runs' errors (admin: Operations > Job runs, filtered by job), fix the cause, "
        "then run it by hand: manage.py runjob {job}"
    ),
    AlertIncident.Kind.STALE: (
        "check that a beat leads and workers consume its queue (/health/, manage.py runjob --list), "
        "then run it by hand: manage.py runjob {job}"
    ),
    AlertIncident.Kind.CONDITION: "read the job's latest run in the admin (Operations > Job runs)",
}


def next_step(incident: AlertIncident) -> str:
    """What to do about the incident: the rule's own advice, or the job rules' default."""
    return (incident.detail or {}).get("next_step") or _JOB_NEXT_STEPS[incident.kind].format(job=incident.job)


class LogBackend:
    def send(self, *, incident: AlertIncident, event: str) -> None:
        if event == "opened":
            log.error("ALERT job=%s kind=%s %s; next: %s", incident.job, incident.kind, incident.summary,
                      next_step(incident))
        else:
            log.warning("RECOVERED job=%s kind=%s %s", incident.job, incident.kind, incident.summary)


class EmailBackend:
    """Mail to settings.ADMINS (nothing is sent when ADMINS is empty)."""

    def send(self, *, incident: AlertIncident, event: str) -> None:
        if event == "opened":
            subject = f"ALERT {incident.job}: {incident.get_kind_display()}"
            body = (
                f"{incident.summary}\n\nWhat to do next: {next_step(incident)}\n\n"
                f"Opened at {incident.opened_at:%Y-%m-%d %H:%M:%S %Z}.\n"
            )
        else:
            subject = f"RECOVERED {incident.job}: {incident.get_kind_display()}"
            body = (
                f"{incident.job} has recovered ({incident.get_kind_display()}).\n"
                f"The incident opened at {incident.opened_at:%Y-%m-%d %H:%M:%S %Z}: {incident.summary}\n"
            )
        mail_admins(subject, body, fail_silently=False)


def _notify(incident: AlertIncident, event: str) -> None:
    for path in settings.ALERT_BACKENDS:
        try:
            import_string(path)().send(incident=incident, event=event)
        except Exception:  # one broken backend must not silence the others, nor fail a job
            log.exception("alert backend %s failed for incident %s", path, incident.pk)


def _open(job: str, kind: str, summary: str, detail: dict, now: datetime) -> AlertIncident | None:
    try:
        with transaction.atomic():
            incident = AlertIncident.objects.create(
                job=job, kind=kind, summary=summary, detail=detail, opened_at=now
            )
    except IntegrityError:
        return None  # already open (another evaluator got there first)
    _notify(incident, "opened")
    return incident


def _resolve(incident: AlertIncident, now: datetime) -> bool:
    if not AlertIncident.objects.filter(pk=incident.pk, resolved_at__isnull=True).update(resolved_at=now):
        return False
    incident.resolved_at = now
    _notify(incident, "resolved")
    return True


def _failure_ratio(job: str, now: datetime) -> tuple[bool, str, dict]:
    """(tripped, summary, detail) of the failure-ratio rule.

    Tripped: enough runs in the window, too many of them failed, and the job has not
    since strung together ALERT_MIN_RUNS successes (which is how it recovers before
    the failures age out of the window).
    """
    window = settings.ALERT_WINDOW
    threshold = settings.ALERT_FAILURE_RATIO
    finished = JobRun.objects.filter(
        job=job, dry_run=False, started_at__gte=now - window,
        status__in=[JobRun.Status.SUCCESS, JobRun.Status.FAILED],
    )
    agg = finished.aggregate(
        runs=Count("id"), failed=Count("id", filter=Q(status=JobRun.Status.FAILED))
    )
    runs, failed = agg["runs"], agg["failed"]
    ratio = failed / runs if runs else 0.0
    tripped = runs >= settings.ALERT_MIN_RUNS and ratio > threshold
    if tripped:
        latest = list(
            finished.order_by("-started_at").values_list("status", flat=True)[: settings.ALERT_MIN_RUNS]
        )
        tripped = JobRun.Status.FAILED in latest
    summary = (
        f"{failed} of the last {runs} runs failed in {_hours(window)} "
        f"({ratio:.0%}, threshold {threshold:.0%})"
    )
    return tripped, summary, {"runs": runs, "failed": failed, "ratio": ratio}


def _stale(status: JobStatus, now: datetime) -> tuple[bool, str, dict] | None:
    """The no-recent-success rule, which is the job status's "late"; None when nothing schedules the job."""
    if not status.scheduled or status.interval is None:
        return None
    interval = status.interval
    summary = f"no successful run in the last {_hours(2 * interval)} (expected every {_hours(interval)})"
    return status.late, summary, {"interval_s": interval.total_seconds()}


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:g} h" if hours >= 1 else f"{delta.total_seconds() / 60:g} min"


def evaluate_job(
    job: str, *, now: datetime | None = None, open_incidents: list[AlertIncident] | None = None,
    check_stale: bool = True, status: JobStatus | None = None,
) -> dict[str, str]:
    """Evaluate the rules of one job; returns {kind: "opened" | "resolved"} for what changed."""
    now = now or timezone.now()
    if open_incidents is None:
        open_incidents = list(AlertIncident.objects.filter(job=job, resolved_at__isnull=True))
    open_by_kind = {i.kind: i for i in open_incidents}
    rules = {AlertIncident.Kind.FAILURE_RATIO: _failure_ratio(job, now)}
    if check_stale:
        status = status or job_statuses(now, names=[job])[job]
        rules[AlertIncident.Kind.STALE] = _stale(status, now)
    changes = {}
    for kind, outcome in rules.items():
        if outcome is None:
            continue
        tripped, summary, detail = outcome
        incident = open_by_kind.get(kind)
        if incident is None and tripped:
            if _open(job, kind, summary, detail, now) is not None:
                changes[kind] = "opened"
        elif incident is not None and not tripped:
            if _resolve(incident, now):
                changes[kind] = "resolved"
    return changes


def alert_raise(*, job: str, summary: str, detail: dict | None = None) -> bool:
    """Open the job's "condition" incident (a threshold passed, a chain stopped); notifies once.

    Returns True when this call opened it, False when it was already open.
    """
    return _open(job, AlertIncident.Kind.CONDITION, summary, detail or {}, timezone.now()) is not None


def alert_clear(*, job: str) -> bool:
    """Resolve the job's open "condition" incident, if any, with a recovery notice."""
    incident = AlertIncident.objects.filter(
        job=job, kind=AlertIncident.Kind.CONDITION, resolved_at__isnull=True
    ).first()
    return incident is not None and _resolve(incident, timezone.now())


def alerts_after_run(run: JobRun) -> None:
    """Evaluate the job's rules after one of its runs; never raises into the runner."""
    try:
        open_incidents = list(AlertIncident.objects.filter(job=run.job, resolved_at__isnull=True))
        # A success cannot trip a rule, so with nothing open there is nothing to do.
        if not open_incidents and run.status != JobRun.Status.FAILED:
            return
        evaluate_job(
            run.job, open_incidents=open_incidents,
            check_stale=any(i.kind == AlertIncident.Kind.STALE for i in open_incidents),
        )
    except Exception:
        log.exception("alert evaluation after run %s of %s failed", run.pk, run.job)


@dataclass(frozen=True)
class Condition:
    """What a rule found: whether it trips, in one line, with figures for the incident."""

    tripped: bool
    summary: str
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AlertRule:
    name: str
    check: Callable[[datetime], Condition]
    next_step: str


_RULES: dict[str, AlertRule] = {}


def alert_rule(name: str, *, next_step: str):
    """Register `check(now) -> Condition` as the rule `name` (the incident's name), with advice."""
    def register(check: Callable[[datetime], Condition]):
        _RULES[name] = AlertRule(name=name, check=check, next_step=next_step)
        return check
    return register


def alert_rules() -> dict[str, AlertRule]:
    return dict(_RULES)


def evaluate_rules(now: datetime | None = None, open_incidents: dict | None = None) -> dict[str, str]:
    """Check every registered rule; returns {rule: "opened" | "resolved"} for what changed.

    A rule that cannot be checked (its database table or service is what is down) keeps
    its incident as it was and is logged, so one broken rule never hides the others.
    """
    now = now or timezone.now()
    if open_incidents is None:
        open_incidents = {
            i.job: i for i in AlertIncident.objects.filter(
                job__in=list(_RULES), kind=AlertIncident.Kind.CONDITION, resolved_at__isnull=True)
        }
    changes = {}
    for rule in _RULES.values():
        try:
            found = rule.check(now)
        except Exception:
            log.exception("alert rule %s could not be checked", rule.name)
            continue
        incident = open_incidents.get(rule.name)
        if incident is None and found.tripped:
            detail = {**found.detail, "next_step": rule.next_step}
            if _open(rule.name, AlertIncident.Kind.CONDITION, found.summary, detail, now) is not None:
                changes[rule.name] = "opened"
        elif incident is not None and not found.tripped:
            if _resolve(incident, now):
                changes[rule.name] = "resolved"
    return changes


def alerts_evaluate(now: datetime | None = None) -> dict[str, dict[str, str]]:
    """Evaluate every registered job's rules and every registered rule; what changed per name."""
    now = now or timezone.now()
    open_incidents: dict[str, list[AlertIncident]] = {}
    for incident in AlertIncident.objects.filter(resolved_at__isnull=True):
        open_incidents.setdefault(incident.job, []).append(incident)
    statuses = job_statuses(now)
    changes = {}
    for job in all_jobs():
        changed = evaluate_job(job, now=now, open_incidents=open_incidents.get(job, []), status=statuses[job])
        if changed:
            changes[job] = changed
    rule_incidents = {
        name: incident for name, incidents in open_incidents.items() if name in _RULES
        for incident in incidents if incident.kind == AlertIncident.Kind.CONDITION
    }
    for name, change in evaluate_rules(now, rule_incidents).items():
        changes.setdefault(name, {})[AlertIncident.Kind.CONDITION] = change
    return changes


@alert_rule("dead_letters", next_step=(
    "read the dead tasks' errors (admin: Operations > Dead letters), fix the cause, "
    "then requeue them from the admin (action: requeue)"
))
def _dead_letters_piling_up(now: datetime) -> Condition:
    dead = DeadLetter.objects.filter(state=DeadLetter.State.DEAD).count()
    threshold = settings.ALERT_DEAD_LETTERS
    return Condition(dead >= threshold, f"{dead} dead tasks wait in the dead letters (threshold {threshold})",
                     {"dead": dead, "threshold": threshold})
