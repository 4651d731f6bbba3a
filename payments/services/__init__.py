"""Writes of the payments app, one module per concern:

- state: what the gateway says about a payment, applied forward-only (the one path that changes payments)
- claims: leases on payment rows, so two workers never act on one payment
- settle: the settle loop (claim, ask the gateway, apply) behind payment_sync and order_cleanup
- capture: capturing an authorized payment, or releasing it
- order_cleanup: settling and closing orders past their TTL
- refunds: refunds of captured payments, recorded before the gateway is asked and re-driven until done
- reports: the payment report of each sync period
"""
