"""The job runtime's tables: the run ledger, job leases, dead letters and the outbox."""
from django.db import models
from django.db.models import Q
from django.utils import timezone


class JobRun(models.Model):
    """One run of a scheduled job: what triggered it, how it ended, what it did."""

    class Trigger(models.TextChoices):
        BEAT = "beat"
        MANUAL = "manual"
        RETRY = "retry"
        CATCH_UP = "catch_up", "catch-up"
        CONTINUATION = "continuation"
        CHAIN = "chain"
        # Asked for from the admin by the user in `requested_by`.
        ADMIN = "admin"

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCESS = "success"
        FAILED = "failed"
        SKIPPED = "skipped"

    job = models.CharField(max_length=64)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    dry_run = models.BooleanField(default=False)
    params = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    task_id = models.CharField(max_length=255, blank=True)
    # The username of who asked for the run from the admin; empty for runs the schedule or the runtime started.
    requested_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-started_at"]
        permissions = [("run_job", "Can run a job now from the admin")]
        indexes = [
            models.Index(fields=["job", "-started_at"], name="jobrun_job_started_idx"),
            models.Index(fields=["started_at"], name="jobrun_started_idx"),
            models.Index(fields=["status", "job"], name="jobrun_status_job_idx"),
            # A message's runs by its task id: redeliveries, and copies of a slot sent again (ops.runtime.tasks).
            models.Index(fields=["task_id"], name="jobrun_task_idx", condition=~models.Q(task_id="")),
        ]

    def __str__(self) -> str:
        return f"{self.job} #{self.pk} {self.status}"


class JobChunk(models.Model):
    """One bounded part of a run that fanned out (`ctx.fan_out`): any worker on any host claims it.

    The parent run stays "running" until its last chunk ends; each chunk's counts are
    added to the parent's when it ends (ops.runtime.ledger.chunk_finish). `attempt`
    grows at every claim, and only the attempt holding the claim may end the chunk or
    store its progress, so a chunk taken over from a lost worker is counted once.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    run = models.ForeignKey(JobRun, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempt = models.PositiveIntegerField(default=0)
    # Attempts that ended with their worker lost (the sweep handed the chunk back).
    lost = models.PositiveIntegerField(default=0)
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    # How far the part got, stored in the transaction of each batch it committed (ctx.checkpoint):
    # {"state": where to resume, "counts": what the committed batches did}. An attempt taking the
    # chunk over resumes there and counts on from there, so a redone chunk counts every row once.
    progress = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # The Celery worker (its -n name) and the process of the attempt holding or last holding the chunk.
    worker = models.CharField(max_length=255, blank=True)
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    task_id = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="jobchunk_once_per_run_index")]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="jobchunk_status_beat_idx")]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.index} {self.status}"


class JobLease(models.Model):
    """Portable single-flight lock: a lease renewed by heartbeats, free once expired.

    Used on SQLite and behind PgBouncer's transaction pooling; PostgreSQL reached
    as one session per connection uses session advisory locks instead (released by
    the server when the holder's connection dies). See ops.runtime.locks.
    """

    job = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=255)
    acquired_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.job} held by {self.holder}"


class DeadLetter(models.Model):
    """A task that failed: retrying while attempts remain, dead after the last one."""

    class State(models.TextChoices):
        RETRYING = "retrying"
        DEAD = "dead"
        RECOVERED = "recovered"
        REQUEUED = "requeued"

    task_name = models.CharField(max_length=255)
    task_id = models.CharField(max_length=255, unique=True)
    queue = models.CharField(max_length=64, blank=True)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RETRYING)
    attempts = models.PositiveIntegerField(default=1)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    first_failed_at = models.DateTimeField(default=timezone.now)
    last_failed_at = models.DateTimeField(default=timezone.now)
    requeued_at = models.DateTimeField(null=True, blank=True)
    requeued_task_id = models.CharField(max_length=255, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_failed_at"]
        permissions = [("requeue_deadletter", "Can requeue dead tasks")]
        indexes = [
            models.Index(fields=["state", "-last_failed_at"], name="deadletter_state_idx"),
            models.Index(fields=["task_name"], name="deadletter_task_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} {self.task_id} ({self.state})"


class OutboxEvent(models.Model):
    """An event written in the same transaction as the change it announces.

    The relay hands it to its subscribers' tasks after commit and marks it
    published; a broker that is down at commit only delays it.
    """

    topic = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    # Optional idempotency key: the same fact announced twice is stored once.
    key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(
                fields=["id"], condition=Q(published_at__isnull=True), name="outbox_unpublished_idx"
            ),
            models.Index(fields=["published_at"], name="outbox_published_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic} #{self.pk}"


class ManagedSchedule(models.Model):
    """A django-celery-beat row that `sync_schedules` manages, and what code last declared for it.

    The fingerprint lets sync tell a changed declaration (overwrite the row) from
    an admin edit of an unchanged one (keep it). An empty fingerprint marks a row
    retired because code no longer declares it.
    """

    name = models.CharField(max_length=200, primary_key=True)
    fingerprint = models.CharField(max_length=64, blank=True)
    declared = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    synced_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name


class AlertIncident(models.Model):
    """One alert incident for a job: opened once when a rule trips, resolved when it recovers."""

    class Kind(models.TextChoices):
        FAILURE_RATIO = "failure_ratio", "failure ratio"
        STALE = "stale", "no recent success"
        # Raised by a job about what it found (thresholds passed, a chain stopped).
        CONDITION = "condition", "condition reported by the job"

    job = models.CharField(max_length=64)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    summary = models.TextField()
    detail = models.JSONField(default=dict, blank=True)
    opened_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["job", "kind"], condition=Q(resolved_at__isnull=True),
                name="alertincident_one_open_per_job_kind",
            ),
        ]
        indexes = [
            models.Index(
                fields=["job"], condition=Q(resolved_at__isnull=True), name="alertincident_open_idx"
            ),
        ]

    def __str__(self) -> str:
        state = "resolved" if self.resolved_at else "open"
        return f"{self.job} {self.kind} ({state})"


class BeatLease(models.Model):
    """The lead among the beat processes: whoever holds this row unexpired sends the schedules.

    A row, not a session lock, so that it holds through a transaction-pooling
    PgBouncer and on SQLite. `term` grows by one at every change of holder: a
    write made "as leader" names its term, and a holder whose term moved on has lost.
    """

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=255)
    term = models.PositiveBigIntegerField(default=0)
    acquired_at = models.DateTimeField()
    renewed_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name}: term {self.term} held by {self.holder}"


class BeatSlot(models.Model):
    """One due instant of one schedule, claimed by the beat that sends it (or records it skipped).

    The unique (schedule, slot) key is what makes a slot go out once: a beat
    sends only after its insert of the row won.
    """

    class Outcome(models.TextChoices):
        SENT = "sent"
        CAUGHT_UP = "caught_up", "caught up"
        SKIPPED = "skipped"

    schedule = models.CharField(max_length=200)  # the PeriodicTask name
    slot = models.DateTimeField()
    task = models.CharField(max_length=200)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    # Earlier slots since the schedule's previous claim that this one stands for (none ran).
    superseded = models.PositiveIntegerField(default=0)
    reason = models.TextField(blank=True)
    task_id = models.CharField(max_length=255, blank=True)
    holder = models.CharField(max_length=255)
    term = models.PositiveBigIntegerField(default=0)
    claimed_at = models.DateTimeField()
    # Empty on a sent slot: the broker never confirmed it (the claiming beat died in between).
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-slot"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "slot"], name="beatslot_once_per_schedule_slot"),
        ]
        indexes = [models.Index(fields=["claimed_at"], name="beatslot_claimed_idx")]

    def __str__(self) -> str:
        return f"{self.schedule} @ {self.slot:%Y-%m-%d %H:%M:%S} {self.outcome}"
