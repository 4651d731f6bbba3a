"""What a job body raises to say how its run ended, when it did not simply succeed."""


class JobError(Exception):
    """A clear, expected failure: the message is the whole story, so no traceback is kept."""


class JobSkipped(Exception):
    """Raised by a job body that decides not to run; the reason is recorded in the ledger."""
