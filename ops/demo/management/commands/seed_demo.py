"""`manage.py seed_demo`: realistic checkout data over the last days, bulk-loaded."""
from django.core.management.base import BaseCommand, CommandError

from ops.demo.data import SeedPlan, demo_data_reset, demo_data_seed
from ops.demo.management.commands._cli import one_line_errors


class Command(BaseCommand):
    help = (
        "Insert realistic demo data (internships, users, carts, orders, payments, enrollments) spread over "
        "the last --days days, and cart:<token> cache entries for live carts when Redis is configured. "
        "Deterministic for a given --seed on the same database state."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        return one_line_errors(super().create_parser(prog_name, subcommand, **kwargs), subcommand)

    def add_arguments(self, parser):
        defaults = SeedPlan()
        parser.add_argument("--carts", type=int, default=defaults.carts, help="carts to create")
        parser.add_argument("--orders", type=int, default=defaults.orders, help="orders to create")
        parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
        parser.add_argument("--days", type=int, default=defaults.days, help="days of history, ending now")
        parser.add_argument("--internships", type=int, default=defaults.internships,
                            help="internships on sale")
        parser.add_argument("--reset", action="store_true",
                            help="first empty the domain tables, the non-staff users and the cart cache")

    def handle(self, *args, **options):
        plan = SeedPlan(
            carts=options["carts"], orders=options["orders"], seed=options["seed"], days=options["days"],
            internships=options["internships"],
        )
        try:
            plan.validate()
        except ValueError as exc:
            raise CommandError(str(exc), returncode=2) from None
        if options["reset"]:
            removed = demo_data_reset()
            self.stdout.write("reset: removed " + ", ".join(f"{n:,} {k}" for k, n in sorted(removed.items())))
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
