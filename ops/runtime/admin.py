"""Admin for the job runtime: the run ledger with per-job statistics, dead letters
(with requeue), the outbox, alert incidents, the schedules sync bookkeeping, and
the beats' lease and slot claims.
Everything here is a record of what happened, so it is read-only; a dead letter's
only write is the requeue action.
"""
from django.contrib import admin, messages
from django.contrib.admin import SimpleListFilter
from django.template.defaultfilters import truncatechars

from checkout.admin import ReadOnlyAdmin
from ops.runtime.dispatch import requeue_dead_letter
from ops.runtime.models import (
    AlertIncident, BeatLease, BeatSlot, DeadLetter, JobRun, ManagedSchedule, OutboxEvent,
)
from ops.runtime.registry import all_jobs
from ops.runtime.selectors import job_stats
from ops.runtime.status import job_statuses


class JobFilter(SimpleListFilter):
    """The registered jobs, without a DISTINCT over the whole ledger."""

    title = "job"
    parameter_name = "job"

    def lookups(self, request, model_admin):
        return [(name, name) for name in all_jobs()]

    def queryset(self, request, queryset):
        return queryset.filter(job=self.value()) if self.value() else queryset


@admin.register(JobRun)
class JobRunAdmin(ReadOnlyAdmin):
    list_display = ("job", "status", "trigger", "dry_run", "started_at", "duration_ms", "what_it_did", "short_error")
    list_filter = (
        JobFilter, "status", "trigger", "dry_run", ("started_at", admin.DateFieldListFilter),
    )
    date_hierarchy = "started_at"
    search_fields = ("=job", "=task_id")
    show_full_result_count = False

    @admin.display(description="counts")
    def what_it_did(self, run: JobRun) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(run.counts.items()))

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
        return request.user.has_perm("ops.change_deadletter")

    @admin.action(description="Requeue the selected dead tasks", permissions=["requeue"])
    def requeue(self, request, queryset):
        requeued = 0
        for letter in queryset.filter(state=DeadLetter.State.DEAD):
            requeue_dead_letter(letter)
            requeued += 1
        ignored = queryset.count() - requeued
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
    broker never confirmed (its beat died between the claim and the send)."""

    list_display = ("schedule", "slot", "outcome", "superseded", "term", "holder", "claimed_at", "sent_at",
                    "short_reason")
    list_filter = ("outcome", ("sent_at", admin.EmptyFieldListFilter), ("slot", admin.DateFieldListFilter))
    date_hierarchy = "slot"
    search_fields = ("=schedule", "=task_id")
    show_full_result_count = False

    @admin.display(description="reason")
    def short_reason(self, slot: BeatSlot) -> str:
        return truncatechars(slot.reason, 80)
