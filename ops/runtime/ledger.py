"""Writes of the run ledger: a row for every run of a job, skipped and dry runs included, and the
rows of the chunks a run fans out to (claimed, ended, summed into their run's row)."""
from __future__ import annotations

import logging
import os
import socket

from collections import Counter

from django.db import transaction
from django.utils import timezone

from ops.runtime.models import JobChunk, JobRun

log = logging.getLogger("ops.jobs")

# The reason recorded when the job's lock is taken; `runjob` exits 3 on it.
LOCK_HELD = "another run of this job holds its lock"
HOLDER_DIED = "the process running it died (its lock was found free)"
CHUNKS_OPEN = "a run of this job is still running its chunks"
OPEN_CHUNK = (JobChunk.Status.PENDING, JobChunk.Status.RUNNING)


def _where() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def run_skipped(job: str, *, trigger: str, reason: str, dry_run: bool = False, params: dict | None = None,
                task_id: str = "", requested_by: str = "") -> JobRun:
    """A ledger row for a run that was not made (lock held, too late to catch up, chain stopped...)."""
    now = timezone.now()
    run = JobRun.objects.create(
        job=job, trigger=trigger, dry_run=dry_run, params=params or {}, status=JobRun.Status.SKIPPED,
        started_at=now, finished_at=now, duration_ms=0, error=reason, task_id=task_id or "",
        requested_by=requested_by, **_where(),
    )
    log.info("job=%s run=%s status=skipped reason=%s", job, run.pk, reason)
    return run


def run_open(job: str, *, trigger: str, dry_run: bool, params: dict, task_id: str = "",
             requested_by: str = "") -> JobRun:
    """The row of a run starting now. Call it holding the job's lock: a row of the job still
    "running" then belongs to a process that died mid-run, and is failed first."""
    JobRun.objects.filter(job=job, status=JobRun.Status.RUNNING, chunks__isnull=True).update(status=JobRun.Status.FAILED, finished_at=timezone.now(), error=HOLDER_DIED)
    now = timezone.now()
    return JobRun.objects.create(
        job=job, trigger=trigger, dry_run=dry_run, params=params, status=JobRun.Status.RUNNING,
        started_at=now, heartbeat_at=now, task_id=task_id or "", requested_by=requested_by, **_where(),
    )


def run_close(run: JobRun) -> None:
    """Store how the run ended (status, result, error, counts, duration) on its row."""
    run.save(update_fields=["status", "result", "error", "traceback", "finished_at", "duration_ms", "counts"])


# --- chunks ---------------------------------------------------------------------------------------

def chunks_open(job: str) -> bool:
    """Whether a run of `job` that fanned out is still open (chunks to do, or its closing step):
    single flight holds until it has closed."""
    return JobRun.objects.filter(job=job, status=JobRun.Status.RUNNING, chunks__isnull=False).exists()


def run_fan_out(run: JobRun, parts: list[dict]) -> list[JobChunk]:
    """Store the run's chunk rows and leave the run "running" with what its own body counted and
    returned (its counts so far); in one transaction, so a run is never left without its chunks."""
    run.result = {**(run.result or {}), "chunks": len(parts), "own_counts": dict(run.counts)}
    with transaction.atomic():
        run.save(update_fields=["result", "counts", "error", "traceback"])
        return JobChunk.objects.bulk_create(
            JobChunk(run=run, index=index, params=part) for index, part in enumerate(parts)
        )


def chunk_claim(chunk_pk: int, *, worker: str, task_id: str = "") -> JobChunk | None:
    """Take a pending chunk for this process (its next attempt); None when it is taken or over."""
    with transaction.atomic():
        chunk = JobChunk.objects.select_for_update().select_related("run").filter(pk=chunk_pk).first()
        if chunk is None or chunk.status != JobChunk.Status.PENDING:
            return None
        now = timezone.now()
        chunk.status, chunk.attempt = JobChunk.Status.RUNNING, chunk.attempt + 1
        chunk.started_at = chunk.heartbeat_at = now
        chunk.worker, chunk.task_id = worker, task_id or ""
        where = _where()
        chunk.host, chunk.pid = where["host"], where["pid"]
        chunk.save(update_fields=["status", "attempt", "started_at", "heartbeat_at", "worker", "task_id", "host", "pid"])
        return chunk


def chunk_release(chunk: JobChunk, error: str) -> bool:
    """Hand a chunk whose attempt failed back for its task's retry; False if the claim was lost."""
    return bool(JobChunk.objects.filter(pk=chunk.pk, status=JobChunk.Status.RUNNING, attempt=chunk.attempt).update(
        status=JobChunk.Status.PENDING, error=error[:4000], queued_at=timezone.now(),
    ))


def chunk_checkpoint(chunk_pk: int, attempt: int, *, state: dict, counts: dict) -> bool:
    """Store how far a chunk's attempt got (inside the transaction of the batch that got it there);
    False when the attempt no longer holds the chunk (handed to another worker)."""
    return bool(JobChunk.objects.filter(pk=chunk_pk, status=JobChunk.Status.RUNNING, attempt=attempt).update(
        progress={"state": state, "counts": counts}, heartbeat_at=timezone.now(),
    ))


def chunk_states(run_pk: int) -> list[dict]:
    """The last stored progress state of each done chunk of a run, in chunk order (see chunk_checkpoint)."""
    rows = JobChunk.objects.filter(run_id=run_pk, status=JobChunk.Status.DONE).order_by("index")
    return [(progress or {}).get("state") or {} for progress in rows.values_list("progress", flat=True)]


def chunk_finish(chunk: JobChunk, *, status: str, counts: dict, error: str = "",
                 lost: bool = False, closes: bool = False) -> tuple[bool, JobRun | None]:
    """End the chunk's attempt and add its counts to its run's row; the run is closed when this was
    its last open chunk (success, or failed naming the failed chunks). With `closes` (the job has a
    closing step) a run whose chunks all succeeded is returned still "running", its heartbeat set
    now, for the caller to run that step and close it (`run_close_step`).

    Only the attempt that holds the claim ends it (a conditional UPDATE under the run's row lock):
    (False, None) tells an attempt whose chunk was handed to another worker that nothing was counted.
    Returns (counted, the run if it closed now).
    """
    now = timezone.now()
    with transaction.atomic():
        run = JobRun.objects.select_for_update().get(pk=chunk.run_id)
        ended = JobChunk.objects.filter(pk=chunk.pk, status=JobChunk.Status.RUNNING, attempt=chunk.attempt).update(
            status=status, counts=counts, error=error[:4000], finished_at=now,
            **({"lost": chunk.lost + 1} if lost else {}),
        )
        if not ended:
            return False, None
        return True, _run_settle(run, now, closes=closes)


def _run_settle(run: JobRun, now, *, closes: bool = False) -> JobRun | None:
    chunks = list(JobChunk.objects.filter(run=run).values("status", "counts", "error", "worker", "lost", "index"))
    total = Counter((run.result or {}).get("own_counts") or {})
    for chunk in chunks:
        if chunk["status"] == JobChunk.Status.DONE:
            total.update(chunk["counts"])
    run.counts = dict(total)
    if any(chunk["status"] in OPEN_CHUNK for chunk in chunks):
        run.save(update_fields=["counts"])
        return None
    failed = [chunk for chunk in chunks if chunk["status"] == JobChunk.Status.FAILED]
    run.result = {
        **run.result, "chunks_failed": len(failed), "chunks_redone": sum(chunk["lost"] for chunk in chunks),
        "workers": dict(Counter(chunk["worker"] for chunk in chunks if chunk["worker"])),
    }
    if closes and not failed:
        # Its closing step comes next, in this process, beating for the run as it goes.
        run.heartbeat_at = now
        run.save(update_fields=["counts", "result", "heartbeat_at"])
        return run
    run.status = JobRun.Status.FAILED if failed else JobRun.Status.SUCCESS
    if failed:
        first = failed[0]
        run.error = f"{len(failed)} of {len(chunks)} chunks failed; chunk {first['index']}: {first['error']}"[:4000]
    run.finished_at = now
    run.duration_ms = max(int((now - run.started_at).total_seconds() * 1000), 0)
    run_close(run)
    return run
