"""seed_demo's bulk path on PostgreSQL: indexes and constraints dropped for the load come back exactly."""
import pytest
from django.db import connection

from carts.models import Cart
from ops.demo.data import SeedPlan, demo_data_seed
from ops.demo.data.generate import Generator
from orders.models import Order

pytestmark = pytest.mark.postgres

DOMAIN_TABLES = [
    "carts_cart", "orders_order", "payments_payment", "orders_enrollment", "auth_user", "orders_internship",
]
PLAN = SeedPlan(carts=3000, orders=600, seed=5)


def _schema():
    """Indexes and constraints of the domain tables, as the catalog lists them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) ORDER BY 1, 2",
            [DOMAIN_TABLES],
        )
        indexes = cursor.fetchall()
        cursor.execute(
            """SELECT conrelid::regclass::text, conname, contype, condeferrable, condeferred, convalidated,
                      pg_get_constraintdef(oid)
               FROM pg_constraint WHERE conrelid = ANY(%s::regclass[]) ORDER BY 1, 2""",
            [DOMAIN_TABLES],
        )
        return {"indexes": indexes, "constraints": cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_a_seed_into_empty_tables_recreates_every_index_and_constraint_as_it_was():
    # given the schema as the migrations made it
    before = _schema()
    names = {row[1] for row in before["indexes"]} | {row[1] for row in before["constraints"]}
    assert {"carts_cart_token_key", "cart_created_idx", "payments_payment_order_id_22c479b7"} <= names
    assert any(row[2] == "f" and row[0] == "orders_enrollment" for row in before["constraints"])

    # when a seed that drops and recreates them commits
    result = demo_data_seed(plan=PLAN, warm_cache=False)

    # then
    assert result.rebuilt == ("carts_cart", "orders_order", "payments_payment", "orders_enrollment")
    assert _schema() == before
    assert Cart.objects.count() == PLAN.carts and Order.objects.count() == PLAN.orders


@pytest.mark.django_db
def test_a_seed_that_fails_mid_load_leaves_the_schema_and_the_tables_as_they_were(monkeypatch):
    # given
    before = _schema()
    placed = 0
    order = Generator._order

    def failing_order(self, *args):
        nonlocal placed
        placed += 1
        if placed > 300:
            raise RuntimeError("generator failed")
        order(self, *args)

    monkeypatch.setattr(Generator, "_order", failing_order)

    # when
    with pytest.raises(RuntimeError, match="generator failed"):
        demo_data_seed(plan=PLAN, warm_cache=False, chunk_rows=500)

    # then
    assert _schema() == before
    assert not Cart.objects.exists() and not Order.objects.exists()


@pytest.mark.django_db
def test_tables_that_already_hold_rows_keep_their_indexes_during_the_load():
    # given
    first = demo_data_seed(plan=SeedPlan(carts=300, orders=60, seed=1), warm_cache=False)
    before = _schema()

    # when
    second = demo_data_seed(plan=SeedPlan(carts=300, orders=60, seed=1), warm_cache=False)

    # then
    assert first.rebuilt and second.rebuilt == ()
    assert _schema() == before


@pytest.mark.django_db
def test_a_seed_told_not_to_rebuild_keeps_the_indexes_in_place():
    before = _schema()

    result = demo_data_seed(plan=PLAN, rebuild_schema=False, warm_cache=False)

    assert result.rebuilt == ()
    assert _schema() == before
