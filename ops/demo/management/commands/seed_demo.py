"""`manage.py seed_demo`: realistic checkout data over the last days, bulk-loaded.

`--reset` first empties the domain tables: at once on a demo database (one `demo` made),
otherwise only with `--yes-destroy <database name>`; either way it first says what goes.
"""
from checkout import commands
from checkout.commands import UsageError, add_destroy_confirmation, refuse_destruction
from ops.demo.data import (
    SeedPlan,
    database_label,
    demo_data_doomed,
    demo_data_reset,
    demo_data_seed,
    is_demo_database,
)


def _tally(counts) -> str:
    return ", ".join(f"{n:,} {name}" for name, n in sorted(counts.items())) or "nothing"


class Command(commands.Command):
    help = (
        "Insert realistic demo data (internships, users, carts, orders, payments, enrollments) spread over "
        "the last --days days, and cart:<token> cache entries for live carts when Redis is configured. "
        "Deterministic for a given --seed on the same database state."
    )

    def add_arguments(self, parser):
        defaults = SeedPlan()
        parser.add_argument("--carts", type=int, default=defaults.carts, help="carts to create")
        parser.add_argument("--orders", type=int, default=defaults.orders, help="orders to create")
        parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
        parser.add_argument("--days", type=int, default=defaults.days, help="days of history, ending now")
        parser.add_argument("--internships", type=int, default=defaults.internships,
                            help="internships on sale")
        parser.add_argument("--reset", action="store_true",
                            help="first empty the domain tables, the non-staff users and the cart cache; "
                                 "on a database the demo did not make, only with --yes-destroy")
        add_destroy_confirmation(parser, what="--reset")

    def handle(self, *args, **options):
        plan = SeedPlan(
            carts=options["carts"], orders=options["orders"], seed=options["seed"], days=options["days"],
            internships=options["internships"],
        )
        try:
            plan.validate()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        confirmation = options["yes_destroy"]
        if confirmation is not None and not options["reset"]:
            raise UsageError("--yes-destroy goes with --reset")
        if options["reset"]:
            self._reset(confirmation)
        result = demo_data_seed(plan=plan)
        counts = result.counts
        self.stdout.write(
            f"seeded {counts['users']:,} users, {counts['internships']:,} internships, {counts['carts']:,} carts, "
            f"{counts['orders']:,} orders, {counts['payments']:,} payments, {counts['enrollments']:,} enrollments "
            f"in {result.seconds:.1f} s ({result.method}), peak RSS {result.peak_rss_mb:.0f} MB"
        )
        if result.cache_error:
            self.stderr.write(f"cart cache not written: {result.cache_error}")
        elif result.cache_entries:
            self.stdout.write(f"cached {result.cache_entries:,} live carts in Redis")

    def _reset(self, confirmation: str | None) -> None:
        database = database_label()
        doomed = +demo_data_doomed()  # the tables with rows
        if confirmation is not None or (doomed and not is_demo_database()):
            refuse_destruction(
                confirmation, database=database, damage=f"--reset would delete {_tally(doomed)} in {database!r}",
                why="the demo did not make that database (no demo marker)",
            )
        self.stdout.write(f"reset: deleting {_tally(doomed)} in {database!r}")
        removed = +demo_data_reset()
        self.stdout.write(f"reset: removed {_tally(removed)}")
