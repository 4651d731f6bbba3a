"""The runtime's lock, lease and claim tests, run again with every connection going through PgBouncer.

They are the tests that show each guarantee on direct connections (tests/ops/runtime).
Here this process and its children (workers, runjob, beat) reach the database through a
transaction-pooling PgBouncer whose two server connections take turns, and take job locks
as DATABASE_POOLING=transaction says: single flight between processes, a killed holder's
lock freed, one winner among concurrent slot claims, a frozen beat that lost the lead
sending nothing, and the leader's sweep of lost runs.
"""
import pytest

from tests.ops.runtime.test_beat_ha import (  # noqa: F401  (collected here, run through the pooler)
    test_a_frozen_leader_that_wakes_up_finds_it_lost_the_lead_and_sends_nothing,
    test_of_many_concurrent_claims_of_one_slot_exactly_one_wins,
    test_the_leading_beat_sweeps_runs_whose_worker_was_lost,
)
from tests.ops.runtime.test_ledger import (  # noqa: F401
    test_lock_is_not_reentrant_in_the_same_thread,
    test_run_is_skipped_while_another_holds_the_lock,
)
from tests.ops.runtime.test_processes import (  # noqa: F401
    test_a_sigkilled_holder_frees_the_lock_and_the_next_run_succeeds,
    test_real_beat_fires_schedules_into_the_ledger_and_results_and_sees_admin_edits,
    test_second_process_is_skipped_while_a_worker_holds_the_job,
)

pytestmark = [
    pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("through_pgbouncer"),
]
