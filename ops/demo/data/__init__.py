"""Realistic demo data for the checkout domain, for `seed_demo` and `demo`: seed, reset, cache, fake gateway.

The same seed on the same database state gives the same rows.
"""
from ops.demo.data.cache import cart_cache_warm
from ops.demo.data.gateway import fake_gateway_populate
from ops.demo.data.load import demo_data_seed
from ops.demo.data.plan import SeedPlan, SeedResult, peak_rss_mb
from ops.demo.data.reset import demo_data_reset

__all__ = [
    "SeedPlan", "SeedResult", "cart_cache_warm", "demo_data_reset", "demo_data_seed", "fake_gateway_populate",
    "peak_rss_mb",
]
