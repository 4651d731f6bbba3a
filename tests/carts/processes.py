"""Processes for the cart cleanup concurrency tests: `python -m tests.carts.processes ROLE GATE ARG`.

Each sets Django up, waits at a Redis gate so that all start together, does its
part and prints one JSON line with what it did.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cleaner(batch_size: int) -> dict:
    """Delete expired and flag idle carts straight through the services, bypassing
    single flight on purpose: the statements themselves must be safe when runs overlap."""
    from django.conf import settings
    from django.utils import timezone

    from carts.services import cart_flag_abandoned, cart_purge_expired

    now = timezone.now()
    purged = cart_purge_expired(cutoff=now - settings.CART_TTL, batch_size=batch_size)
    flagged = cart_flag_abandoned(idle_cutoff=now - settings.CART_ABANDON_AFTER, now=now, batch_size=batch_size)
    return {"deleted": purged.rows, "flagged": flagged.rows, "batches": purged.batches + flagged.batches}


def writer(target_ids: list[int]) -> dict:
    """A checkout at work: comes back to old carts, places orders on some, opens new carts."""
    from django.db import IntegrityError, transaction

    from carts.models import Cart
    from carts.services import cart_create, cart_touch
    from orders.models import Internship, Order

    internship = Internship.objects.order_by("pk").first()
    done = {"touched": [], "touch_refused": [], "ordered": [], "order_refused": [], "created": []}
    for n, cart_id in enumerate(target_ids):
        if n % 2:
            try:
                with transaction.atomic():
                    Order.objects.create(cart_id=cart_id, internship=internship, amount_paise=internship.price_paise)
                done["ordered"].append(cart_id)
            except IntegrityError:
                done["order_refused"].append(cart_id)
        else:
            with transaction.atomic():
                touched = cart_touch(cart=Cart(pk=cart_id))
            done["touched" if touched else "touch_refused"].append(cart_id)
        with transaction.atomic():
            done["created"].append(cart_create(internship=internship).pk)
    return done


def start(role: str, gate: str, env: dict, arg) -> subprocess.Popen:
    """Start one of these processes (from a test); it waits at `gate` before it acts."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.carts.processes", role, gate, str(arg)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def report_of(proc: subprocess.Popen) -> dict:
    """What a finished process did: its last line of JSON (it must have exited 0)."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    import django

    django.setup()
    from checkout.redis import get_redis

    role, gate, arg = argv
    from tests.services import blpop_patiently

    if blpop_patiently(get_redis(), gate, 60) is None:
        raise SystemExit("the gate never opened")
    if role == "cleaner":
        report = cleaner(int(arg))
    else:
        report = writer(json.loads(arg))
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
