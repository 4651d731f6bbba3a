"""Realistic demo data for the checkout domain, for `seed_demo` and `demo`: seed, reset, cache, fake gateway,
and which databases are the demo's own.

The same seed on the same database state gives the same rows.
"""
from ops.demo.data.cache import cart_cache_warm
from ops.demo.data.database import (
    DEMO_ADMIN_USERNAME,
    NotADemoDatabase,
    database_label,
    demo_admin_ensure,
    demo_database_claim,
    is_demo_database,
)
from ops.demo.data.gateway import fake_gateway_populate
from ops.demo.data.load import demo_data_seed
from ops.demo.data.plan import SeedPlan, SeedResult, peak_rss_mb
from ops.demo.data.reset import demo_data_doomed, demo_data_reset

__all__ = [
    "DEMO_ADMIN_USERNAME", "NotADemoDatabase", "SeedPlan", "SeedResult", "cart_cache_warm", "database_label",
    "demo_admin_ensure", "demo_data_doomed", "demo_data_reset", "demo_data_seed", "demo_database_claim",
    "fake_gateway_populate", "is_demo_database", "peak_rss_mb",
]
