"""Admin for the job runtime: the run ledger with per-job statistics and readable results,
dead letters (with requeue), the outbox, alert incidents, the schedules (django-celery-beat's
admin, with permission-checked actions and runs recorded as asked from the admin), the
schedules sync bookkeeping, and the beats' lease and slot claims.

Everything here is a record of what happened, so it is read-only. The writes are actions:
requeue a dead task, run a job now, enable or disable schedules. Each needs its permission
and leaves an entry in the admin's log with the user.
"""
import json

from django.contrib import admin, messages
from django.contrib.admin import SimpleListFilter
from django.core.exceptions import ValidationError
from django.db import models
from django.template.defaultfilters import truncatechars
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import PeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask
from kombu.exceptions import OperationalError

from checkout.admin import ReadOnlyAdmin, audit
from checkout.celery import app
from ops.runtime.dispatch import enqueue_job, requeue_dead_letter
from ops.runtime.models import (
    AlertIncident, BeatLease, BeatSlot, DeadLetter, JobRun, ManagedSchedule, OutboxEvent,
)
from ops.runtime.registry import JOB_TASK_PREFIX, UnknownJob, all_jobs
from ops.runtime.selectors import job_stats
from ops.runtime.status import job_statuses

# Who may run a job now from the admin (schedules' "Run selected tasks", a run's "run again").
RUN_PERMISSION = "ops.run_job"
REQUEUE_PERMISSION = "ops.requeue_deadletter"

# (job, key of its result) -> (model, field): the result names that row, and the run's page links to it.
_RESULT_LINKS: dict[tuple[str, str], tuple[type[models.Model], str]] = {}


def link_result(job: str, key: str, model: type[models.Model], *, field: str = "pk") -> None:
    """Show `key` of `job`'s result as a link to the `model` row whose `field` has that value.

    Apps declare the links in their admin module: the runtime knows no model of theirs.
    """
    _RESULT_LINKS[(job, key)] = (model, field)


def flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    """(key, value) rows of a JSON value: nested objects as dotted keys in key order (jsonb keeps no
    other), lists of objects by index, lists of plain values kept whole. Nothing at all: no rows."""
    if isinstance(value, dict) and value:
        return [row for key, item in sorted(value.items())
                for row in flatten(item, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        return [row for index, item in enumerate(value) for row in flatten(item, f"{prefix}[{index}]")]
    return [(prefix, value)] if prefix else []


def _shown(key: str, value) -> str:
    if value is None or value == {} or value == []:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and not (key == "id" or key.endswith("_id")):
        return f"{value:,}"  # figures get thousands separators, ids do not
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _linked(job: str, key: str, value):
    """The value as a link to the row it names, when the job declared one and the row is still kept."""
    target = _RESULT_LINKS.get((job, key))
    if target is None or value in (None, ""):
        return _shown(key, value)
    model, field = target
    try:
        pk = model._default_manager.filter(**{field: value}).values_list("pk", flat=True).first()
    except (ValueError, TypeError, ValidationError):  # not a value of that field: shown as it is
        return _shown(key, value)
    if pk is None:
        return format_html("{} <span class=\"help\">(no longer kept)</span>", _shown(key, value))
    meta = model._meta
    url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[pk])
    return format_html('<a href="{}">{} {}</a>', url, meta.verbose_name, _shown(key, value))


def _table(rows):
    if not rows:
        return "–"
    return format_html(
        '<table class="run-figures"><thead><tr><th>key</th><th>value</th></tr></thead><tbody>{}</tbody></table>',
        format_html_join("", "<tr><td>{}</td><td>{}</td></tr>", rows),
    )


class JobFilter(SimpleListFilter):
    """The registered jobs, without a DISTINCT over the whole ledger."""

    title = "job"
    parameter_name = "job"

    def lookups(self, request, model_admin):
        return [(name, name) for name in all_jobs()]

    def queryset(self, request, queryset):
        return queryset.filter(job=self.value()) if self.value() else queryset


def _run_now(model_admin, request, job: str, *, dry_run: bool = False, params: dict | None = None) -> str | None:
    """Queue a run of `job` recorded in the ledger as asked from the admin by this user.

    Returns the task id, or None with the reason shown to the user.
    """
    try:
        task_id = enqueue_job(
            job, trigger=JobRun.Trigger.ADMIN, requested_by=request.user.get_username(), dry_run=dry_run,
            params=params,
        )
    except UnknownJob:
        model_admin.message_user(request, f"{job} is not a registered job: nothing was run", messages.ERROR)
        return None
    except OperationalError as exc:
        model_admin.message_user(request, f"The broker did not take {job}: {exc}", messages.ERROR)
        return None
    model_admin.message_user(request, f"Queued {job} as task {task_id}.", messages.SUCCESS)
    return task_id


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    list_display = ("job", "status", "trigger", "requested_by", "dry_run", "started_at", "duration_ms",
                    "what_it_did", "short_error")
    list_filter = (
        JobFilter, "status", "trigger", "dry_run", ("started_at", admin.DateFieldListFilter),
    )
    date_hierarchy = "started_at"
    search_fields = ("=job", "=task_id", "=requested_by")
    show_full_result_count = False
    actions = ("run_again",)
    fieldsets = (
        (None, {"fields": ("job", "status", "trigger", "requested_by", "dry_run", "parameters")}),
        ("When and where", {"fields": ("started_at", "finished_at", "duration_ms", "heartbeat_at", "host", "pid",
                                       "task_id")}),
        ("What it did", {"fields": ("counts_table", "result_table")}),
        ("Error", {"fields": ("error", "traceback")}),
        ("Raw JSON", {"classes": ("collapse",), "fields": ("raw_json",)}),
    )
    readonly_fields = ("parameters", "counts_table", "result_table", "raw_json")

    @admin.display(description="counts")
    def what_it_did(self, run: JobRun) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(run.counts.items()))

    @admin.display(description="parameters")
    def parameters(self, run: JobRun):
        return _table([(key, _shown(key, value)) for key, value in flatten(run.params)])

    @admin.display(description="counts")
    def counts_table(self, run: JobRun):
        return _table([(key, _shown(key, value)) for key, value in flatten(run.counts)])

    @admin.display(description="result")
    def result_table(self, run: JobRun):
        return _table([(key, _linked(run.job, key, value)) for key, value in flatten(run.result)])

    @admin.display(description="params, counts and result")
    def raw_json(self, run: JobRun):
        raw = {"params": run.params, "counts": run.counts, "result": run.result}
        return format_html("<pre>{}</pre>", json.dumps(raw, indent=2, sort_keys=True, default=str))

    def has_run_permission(self, request) -> bool:
        return request.user.has_perm(RUN_PERMISSION)

    @admin.action(description="Run the selected runs' jobs again now (same parameters)", permissions=["run"])
    def run_again(self, request, queryset):
        # Runs of one job with the same parameters ask for one run, not a queue of runs its lock would skip.
        asked = {}
        for run in queryset.only("pk", "job", "dry_run", "params"):
            asked.setdefault((run.job, run.dry_run, json.dumps(run.params, sort_keys=True)), run)
        for (name, dry_run, _), run in asked.items():
            task_id = _run_now(self, request, name, dry_run=dry_run, params=run.params)
            if task_id:
                self.log_change(request, run, f"Ran {name} again now as task {task_id}")

    @admin.display(description="error")
    def short_error(self, run: JobRun) -> str:
        return truncatechars(run.error, 80)

    def changelist_view(self, request, extra_context=None):
        statuses = job_statuses()
        stats = [{"job": name, **row, "status": statuses.get(name)} for name, row in job_stats().items()]
        return super().changelist_view(request, {**(extra_context or {}), "job_stats": stats})


class DeadLetterStateFilter(SimpleListFilter):
    """State, showing the dead ones unless asked otherwise: those are what need a decision."""

    title = "state"
    parameter_name = "state"
    default = DeadLetter.State.DEAD

    def lookups(self, request, model_admin):
        return [*DeadLetter.State.choices, ("all", "All")]

    def selected(self) -> str:
        return self.value() or self.default

    def queryset(self, request, queryset):
        value = self.selected()
        return queryset if value == "all" else queryset.filter(state=value)

    def choices(self, changelist):
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.selected() == str(lookup),
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = ("task_name", "state", "attempts", "short_error", "first_failed_at", "last_failed_at", "requeued_task_id")
    list_filter = (DeadLetterStateFilter, "task_name", "queue")
    search_fields = ("=task_id", "task_name")
    actions = ("requeue",)

    @admin.display(description="error")
    def short_error(self, letter: DeadLetter) -> str:
        return truncatechars(letter.error, 80)

    def has_requeue_permission(self, request) -> bool:
        return request.user.has_perm(REQUEUE_PERMISSION)

    @admin.action(description="Requeue the selected dead tasks", permissions=["requeue"])
    def requeue(self, request, queryset):
        dead = list(queryset.filter(state=DeadLetter.State.DEAD))
        ignored = queryset.count() - len(dead)
        requeued = 0
        for letter in dead:
            try:
                task_id = requeue_dead_letter(letter, requested_by=request.user.get_username())
            except OperationalError as exc:
                self.message_user(request, f"The broker did not take {letter.task_name}: {exc}", messages.ERROR)
                break
            self.log_change(request, letter, f"Requeued as task {task_id}")
            requeued += 1
        self.message_user(request, f"Requeued {requeued} task(s).", messages.SUCCESS)
        if ignored:
            self.message_user(
                request, f"{ignored} selected task(s) were not dead (retrying, recovered or requeued) and were left alone.",
                messages.WARNING,
            )


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "topic", "key", "created_at", "published_at", "attempts", "last_error")
    list_filter = ("topic", ("published_at", admin.EmptyFieldListFilter))
    search_fields = ("=key",)
    show_full_result_count = False


@admin.register(AlertIncident)
class AlertIncidentAdmin(ReadOnlyAdmin):
    list_display = ("job", "kind", "summary", "opened_at", "resolved_at")
    list_filter = ("kind", ("resolved_at", admin.EmptyFieldListFilter), "job")


@admin.register(ManagedSchedule)
class ManagedScheduleAdmin(ReadOnlyAdmin):
    list_display = ("name", "synced_at", "created_at", "retired")

    @admin.display(boolean=True, description="retired")
    def retired(self, schedule: ManagedSchedule) -> bool:
        return not schedule.fingerprint


@admin.register(BeatLease)
class BeatLeaseAdmin(ReadOnlyAdmin):
    list_display = ("name", "holder", "term", "acquired_at", "renewed_at", "expires_at")


@admin.register(BeatSlot)
class BeatSlotAdmin(ReadOnlyAdmin):
    """Which beat sent each slot, or why it did not; an empty "sent at" on a sent slot is one the
    broker never confirmed (its beat died between the claim and the send), and the reason of one the
    next leader sent again names that leader."""

    list_display = ("schedule", "slot", "outcome", "superseded", "term", "holder", "claimed_at", "sent_at",
                    "short_reason")
    list_filter = ("outcome", ("sent_at", admin.EmptyFieldListFilter), ("slot", admin.DateFieldListFilter))
    date_hierarchy = "slot"
    search_fields = ("=schedule", "=task_id")
    show_full_result_count = False

    @admin.display(description="reason")
    def short_reason(self, slot: BeatSlot) -> str:
        return truncatechars(slot.reason, 80)


admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class ScheduleAdmin(PeriodicTaskAdmin):
    """django-celery-beat's schedules, each action behind a permission and written to the admin's log.

    "Run selected tasks" queues a job through the runtime, so its ledger row says it was asked
    from the admin and by whom (the stock action sends the row's own kwargs: trigger beat).
    """

    def has_run_permission(self, request) -> bool:
        return request.user.has_perm(RUN_PERMISSION)

    @admin.action(description="Enable selected tasks", permissions=["change"])
    def enable_tasks(self, request, queryset):
        rows = list(queryset)
        super().enable_tasks(request, queryset)
        audit(request, rows, "Enabled")

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable_tasks(self, request, queryset):
        rows = list(queryset)
        super().disable_tasks(request, queryset)
        audit(request, rows, "Disabled")

    @admin.action(description="Toggle activity of selected tasks", permissions=["change"])
    def toggle_tasks(self, request, queryset):
        rows = list(queryset)
        super().toggle_tasks(request, queryset)
        for row in rows:
            self.log_change(request, row, "Disabled (toggled)" if row.enabled else "Enabled (toggled)")

    @admin.action(description="Run selected tasks now", permissions=["run"])
    def run_tasks(self, request, queryset):
        for row in queryset:
            kwargs = json.loads(row.kwargs or "{}")
            if row.task.startswith(JOB_TASK_PREFIX):
                params = dict(kwargs.get("params") or {})
                if kwargs.get("date"):
                    params["date"] = kwargs["date"]
                task_id = _run_now(
                    self, request, row.task.removeprefix(JOB_TASK_PREFIX), dry_run=bool(kwargs.get("dry_run")),
                    params=params,
                )
            else:
                task_id = self._send(request, row, kwargs)
            if task_id:
                self.log_change(request, row, f"Ran now as task {task_id}")

    def _send(self, request, row: PeriodicTask, kwargs: dict) -> str | None:
        """A task that is not a job (the runtime's relay, alert evaluation): sent as beat sends it."""
        task = app.tasks.get(row.task)
        if task is None:
            self.message_user(request, f"Task {row.task} is not registered: nothing was run", messages.ERROR)
            return None
        options = {"queue": row.queue} if row.queue else {}
        try:
            result = task.apply_async(
                args=json.loads(row.args or "[]"), kwargs=kwargs, headers={"periodic_task_name": row.name}, **options,
            )
        except OperationalError as exc:
            self.message_user(request, f"The broker did not take {row.task}: {exc}", messages.ERROR)
            return None
        self.message_user(request, f"Queued {row.task} as task {result.id}.", messages.SUCCESS)
        return result.id
