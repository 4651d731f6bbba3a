"""What a job body raises to say how its run ended, when it did not simply succeed."""


class JobError(Exception):
    """A clear, expected failure: the message is the whole story, so no traceback is kept.

    Not retried unless `retryable`: a bad parameter or a missing credential fails the
    same way every time, so the run fails at once with one line and lands in the dead
    letters, instead of retrying into the same wall.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class JobSkipped(Exception):
    """Raised by a job body that decides not to run; the reason is recorded in the ledger."""


class ChunkTakenOver(Exception):
    """A chunk's attempt found its chunk claimed by a newer attempt (its worker was thought lost and
    the chunk handed over): the attempt stops, its uncommitted batch rolls back, nothing is counted."""
