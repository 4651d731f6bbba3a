"""What a demo seed is asked for (SeedPlan, with its limits) and what it reports back (SeedResult)."""
from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass, field

MAX_ROWS = 50_000_000
MAX_DAYS = 3650
MAX_INTERNSHIPS = 1000
CHUNK_ROWS = 20_000
# One account per this many carts (or per this many orders, whichever needs more).
CARTS_PER_USER = 10
ORDERS_PER_USER = 5
HOUR = 3600
DAY = 86400


@dataclass(frozen=True)
class SeedPlan:
    carts: int = 2000
    orders: int = 400
    seed: int = 42
    days: int = 60
    internships: int = 12

    def validate(self) -> None:
        """Raise ValueError with one clear sentence for the first bad option."""
        for name, value, low, high in (
            ("carts", self.carts, 0, MAX_ROWS),
            ("orders", self.orders, 0, MAX_ROWS),
            ("days", self.days, 1, MAX_DAYS),
            ("internships", self.internships, 1, MAX_INTERNSHIPS),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"--{name} must be a whole number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"--{name} must be between {low:,} and {high:,}, got {value:,}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"--seed must be a whole number, got {self.seed!r}")

    @property
    def users(self) -> int:
        if not self.carts and not self.orders:
            return 0
        return max(1, -(-self.carts // CARTS_PER_USER), -(-self.orders // ORDERS_PER_USER))


@dataclass
class SeedResult:
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    method: str = ""
    # Tables whose secondary indexes and foreign keys were dropped for the load and recreated.
    rebuilt: tuple[str, ...] = ()
    cache_entries: int = 0
    cache_error: str = ""


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS, where this overstates: fine for a report).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
