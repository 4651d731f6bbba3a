"""Admin for payments, their refunds and disputes, webhook deliveries and payment reports.

A payment mirrors the gateway: its amount, currency, status, Razorpay ids and times are written
by the checkout, the webhooks and payment_sync, never by hand, so nobody adds, edits or deletes
one here (superusers included); deleting one would lose money history.

Money moves only through two actions, each behind its own permission, with a confirmation page
that says what will happen and an entry in the admin's log: refund a captured payment
(payments.refund_payment, through `payment_refund`) and resolve a payment flagged as a mismatch
(payments.resolve_mismatch, through payments.services.resolve). Each confirmation form carries a
token, the refund's idempotency key, so a double submit refunds once.
"""
from __future__ import annotations

import re
import secrets
from decimal import Decimal, InvalidOperation

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import SimpleListFilter
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, Subquery, Sum
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from checkout.admin import ReadOnlyAdmin, ReadOnlyInline
from ops.runtime.admin import link_result
from orders.models import Enrollment, OrderStatus
from orders.services import format_money
from payments import gateway
from payments.models import (
    DISPUTE_NEEDS_ACTION,
    Dispute,
    DisputeStatus,
    Payment,
    PaymentReport,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEvent,
    WebhookRejection,
)
from payments.services.refunds import RefundRefused, payment_refund, payment_refundable_paise
from payments.services.resolve import (
    MismatchRefused,
    payment_mismatch_accept,
    payment_mismatch_gateway,
    payment_mismatch_refund,
)

link_result("payment_sync", "report_id", PaymentReport)

REFUND_PERMISSION = "payments.refund_payment"
RESOLVE_PERMISSION = "payments.resolve_mismatch"
# Rupees as typed: digits, an optional point and decimals (no sign, exponent, grouping or symbol).
_RUPEES = re.compile(r"\d+(\.\d*)?|\.\d+")


def paise_from_rupees(text: str) -> int:
    """An amount typed in rupees ("1499.50") as whole paise, exactly (Decimal, never a float).

    Raises ValueError with one line saying what is wrong with it.
    """
    typed = (text or "").strip()
    if not typed:
        raise ValueError("Enter the amount in rupees, e.g. 1499.50.")
    if not _RUPEES.fullmatch(typed):
        if re.fullmatch(r"-\s*[\d.]+", typed):
            raise ValueError(f"The amount must be more than zero (got {typed[:20]!r}).")
        raise ValueError(f"Enter the amount in rupees as digits with at most two decimals, e.g. 1499.50 "
                         f"(got {typed[:20]!r}).")
    try:
        paise = Decimal(typed) * 100
    except InvalidOperation:
        raise ValueError(f"Enter the amount in rupees, e.g. 1499.50 (got {typed[:20]!r}).") from None
    if paise <= 0:
        raise ValueError(f"The amount must be more than zero (got {typed[:20]!r}).")
    if paise != paise.to_integral_value():
        raise ValueError(f"A refund is in whole paise: at most two decimals (got {typed[:20]!r}).")
    return int(paise)


def rupees(paise: int) -> str:
    """Whole paise as the amount field shows them: 149950 -> "1499.50"."""
    return f"{paise // 100}.{paise % 100:02d}"


class _TokenForm(forms.Form):
    # Made when the page is shown; the refund's idempotency key, so the same form posted twice refunds once.
    token = forms.CharField(widget=forms.HiddenInput, error_messages={
        "required": "The form has lost its token: open the page again."})

    def clean_token(self) -> str:
        token = self.cleaned_data["token"]
        if not gateway.REFUND_KEY.fullmatch(token):
            raise forms.ValidationError("The form's token is not valid: open the page again.")
        return token


def _new_token() -> str:
    return secrets.token_urlsafe(24)


class RefundForm(_TokenForm):
    amount = forms.CharField(label="Amount to refund (rupees)", max_length=32, strip=True, error_messages={
        "required": "Enter the amount in rupees, e.g. 1499.50."})
    reason = forms.CharField(label="Reason", max_length=255, strip=True, error_messages={
        "required": "Say why the payment is refunded (kept with the refund)."})

    def __init__(self, *args, left_paise: int, currency: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.left_paise = left_paise
        self.currency = currency

    def clean_amount(self) -> int:
        try:
            paise = paise_from_rupees(self.cleaned_data["amount"])
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        if paise > self.left_paise:
            raise forms.ValidationError(
                f"That is more than is left to refund: {format_money(self.left_paise, self.currency)}.")
        return paise


class ResolveForm(_TokenForm):
    ACCEPT, REFUND = "accept", "refund"
    decision = forms.ChoiceField(widget=forms.RadioSelect, choices=[
        (ACCEPT, "Accept the gateway's amount"), (REFUND, "Refund and cancel")],
        error_messages={"required": "Choose how to resolve it."})
    reason = forms.CharField(label="Reason", max_length=255, required=False, strip=True)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("decision") == self.REFUND and not cleaned.get("reason"):
            self.add_error("reason", "Say why the payment is refunded (kept with the refund).")
        return cleaned


class MismatchFilter(SimpleListFilter):
    title = "mismatch"
    parameter_name = "mismatch"

    def lookups(self, request, model_admin):
        return [("flagged", "Flagged"), ("no", "Not flagged")]

    def queryset(self, request, queryset):
        if self.value() == "flagged":
            return queryset.exclude(mismatch="")
        if self.value() == "no":
            return queryset.filter(mismatch="")
        return queryset


class DisputeFilter(SimpleListFilter):
    """Payments by their disputes: those waiting for an answer first."""

    title = "dispute"
    parameter_name = "dispute"
    NEEDS_ANSWER = "needs_answer"

    def lookups(self, request, model_admin):
        return [(self.NEEDS_ANSWER, "Needs an answer"), *[(s, label) for s, label in DisputeStatus.choices
                                                          if s not in DISPUTE_NEEDS_ACTION], ("any", "Any dispute")]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        disputes = Dispute.objects.filter(payment=OuterRef("pk"))
        if value == self.NEEDS_ANSWER:
            disputes = disputes.filter(status__in=DISPUTE_NEEDS_ACTION)
        elif value != "any":
            disputes = disputes.filter(status=value)
        return queryset.filter(Exists(disputes))


class RefundInline(ReadOnlyInline):
    model = Refund
    fields = ("created_at", "amount", "status", "razorpay_refund_id", "requested_by", "reason", "attempts",
              "last_error", "processed_at")
    ordering = ("-created_at",)

    @admin.display(description="amount")
    def amount(self, refund: Refund) -> str:
        return format_money(refund.amount_paise, refund.currency)


class DisputeInline(ReadOnlyInline):
    model = Dispute
    fields = ("razorpay_dispute_id", "status", "amount", "reason", "phase", "respond_by", "event_at")
    ordering = ("-event_at",)

    @admin.display(description="amount")
    def amount(self, dispute: Dispute) -> str:
        return format_money(dispute.amount_paise, dispute.currency)


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = ("id", "order", "razorpay_order_id", "razorpay_payment_id", "amount_paise", "currency", "status",
                    "mismatch", "dispute", "created_at", "updated_at")
    list_filter = ("status", MismatchFilter, DisputeFilter, "currency", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=razorpay_order_id", "=razorpay_payment_id", "=order__id")
    list_select_related = ("order",)
    date_hierarchy = "created_at"
    show_full_result_count = False
    inlines = (RefundInline, DisputeInline)
    actions = ("refund", "resolve_mismatch")

    def get_queryset(self, request):
        latest = Dispute.objects.filter(payment=OuterRef("pk")).order_by("-event_at", "-pk")
        return super().get_queryset(request).annotate(dispute_status=Subquery(latest.values("status")[:1]))

    @admin.display(description="dispute", ordering="dispute_status")
    def dispute(self, payment: Payment) -> str:
        status = getattr(payment, "dispute_status", None)
        return DisputeStatus(status).label.lower() if status else "-"

    # --- permissions of the money actions ------------------------------------------------------
    def has_refund_permission(self, request) -> bool:
        return request.user.has_perm(REFUND_PERMISSION)

    def has_resolve_permission(self, request) -> bool:
        return request.user.has_perm(RESOLVE_PERMISSION)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/refund/", view(self.refund_view), name="payments_payment_refund"),
            path("<path:object_id>/resolve/", view(self.resolve_view), name="payments_payment_resolve"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        payment = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if payment is not None:
            if payment.status == PaymentStatus.CAPTURED and self.has_refund_permission(request):
                extra["refund_url"] = reverse("admin:payments_payment_refund", args=[payment.pk])
            if payment.mismatch and self.has_resolve_permission(request):
                extra["resolve_url"] = reverse("admin:payments_payment_resolve", args=[payment.pk])
            if request.user.has_perm("payments.view_refund"):
                extra["refunds_url"] = (reverse("admin:payments_refund_changelist")
                                        + f"?payment__id__exact={payment.pk}")
        return super().change_view(request, object_id, form_url, extra)

    # --- actions: one selected payment, to its confirmation page -------------------------------
    @admin.action(description="Refund the selected payment…", permissions=["refund"])
    def refund(self, request, queryset):
        return self._to_page(request, queryset, "refund", "refund")

    @admin.action(description="Resolve the selected payment's mismatch…", permissions=["resolve"])
    def resolve_mismatch(self, request, queryset):
        return self._to_page(request, queryset, "resolve", "resolve")

    def _to_page(self, request, queryset, page: str, verb: str):
        ids = list(queryset.values_list("pk", flat=True)[:2])
        if len(ids) != 1:
            self.message_user(request, f"Select one payment to {verb}: each has its own confirmation page.",
                              messages.WARNING)
            return None
        return HttpResponseRedirect(reverse(f"admin:payments_payment_{page}", args=[ids[0]]))

    # --- the refund page ------------------------------------------------------------------------
    def refund_view(self, request, object_id):
        if not self.has_refund_permission(request):
            raise PermissionDenied
        payment = self.get_object(request, unquote(object_id))
        if payment is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        back = HttpResponseRedirect(reverse("admin:payments_payment_change", args=[payment.pk]))
        token = request.POST.get("token", "") if request.method == "POST" else ""
        earlier = Refund.objects.filter(idempotency_key=token, payment=payment).first() if token else None
        if earlier is not None:
            # The same confirmation posted again (a double click, a resubmitted page): nothing more is asked.
            level, text = _refund_outcome(payment, earlier)
            self.message_user(request, f"Already submitted: {text}", level)
            return back
        if payment.status != PaymentStatus.CAPTURED or not payment.razorpay_payment_id:
            self.message_user(request, f"Payment {payment.pk} is {payment.status}: only a captured payment can be "
                                       f"refunded.", messages.ERROR)
            return back
        left = payment_refundable_paise(payment_id=payment.pk)
        if left <= 0:
            self.message_user(request, f"Nothing is left to refund of payment {payment.pk} (refunds already made "
                                       f"or on their way cover it).", messages.WARNING)
            return back
        if request.method == "POST":
            form = RefundForm(request.POST, left_paise=left, currency=payment.currency)
            if form.is_valid():
                try:
                    refund = payment_refund(
                        payment, form.cleaned_data["amount"], reason=form.cleaned_data["reason"],
                        requested_by=request.user.get_username(), idempotency_key=form.cleaned_data["token"],
                    )
                except RefundRefused as exc:
                    form.add_error(None, str(exc))
                else:
                    level, text = _refund_outcome(payment, refund)
                    self.log_change(request, payment, text)
                    self.message_user(request, text, level)
                    return back
        else:
            form = RefundForm(initial={"amount": rupees(left), "token": _new_token()}, left_paise=left,
                              currency=payment.currency)
        return self._page(request, payment, "admin/payments/payment/refund.html", f"Refund payment {payment.pk}",
                          form=form, **_refund_facts(payment, left))

    # --- the mismatch page ----------------------------------------------------------------------
    def resolve_view(self, request, object_id):
        if not self.has_resolve_permission(request):
            raise PermissionDenied
        payment = self.get_object(request, unquote(object_id))
        if payment is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        back = HttpResponseRedirect(reverse("admin:payments_payment_change", args=[payment.pk]))
        if request.method == "POST":
            form = ResolveForm(request.POST)
            token = request.POST.get("token", "")
            if not payment.mismatch and not Refund.objects.filter(idempotency_key=token, payment=payment).exists():
                self.message_user(request, f"Payment {payment.pk} is not flagged as a mismatch: nothing to resolve.",
                                  messages.WARNING)
                return back
            if form.is_valid():
                outcome = self._resolve(request, payment, form)
                if outcome is not None:
                    return back
        else:
            if not payment.mismatch:
                self.message_user(request, f"Payment {payment.pk} is not flagged as a mismatch: nothing to resolve.",
                                  messages.WARNING)
                return back
            form = ResolveForm(initial={"token": _new_token()})
        try:
            at_gateway, gateway_error = payment_mismatch_gateway(payment_id=payment.pk), ""
        except (gateway.GatewayError, MismatchRefused) as exc:
            at_gateway, gateway_error = None, str(exc)
        return self._page(request, payment, "admin/payments/payment/resolve.html",
                          f"Resolve the mismatch of payment {payment.pk}", form=form, at_gateway=at_gateway,
                          gateway_error=gateway_error, **_refund_facts(payment, None))

    def _resolve(self, request, payment: Payment, form: ResolveForm):
        user = request.user.get_username()
        data = form.cleaned_data
        try:
            if data["decision"] == ResolveForm.ACCEPT:
                resolution = payment_mismatch_accept(payment_id=payment.pk, requested_by=user)
            else:
                resolution = payment_mismatch_refund(payment_id=payment.pk, reason=data["reason"], requested_by=user,
                                                     idempotency_key=data["token"])
        except (MismatchRefused, RefundRefused) as exc:
            form.add_error(None, str(exc))
            return None
        except gateway.GatewayError as exc:
            answer = "did not answer" if exc.retryable else "refused"
            form.add_error(None, f"The gateway {answer}, nothing changed: {exc}")
            return None
        level = {"refund_failed": messages.ERROR, "refund_requested": messages.WARNING}.get(
            resolution.outcome, messages.SUCCESS)
        if not resolution.repeated:
            self.log_change(request, payment, f"Resolve mismatch ({data['decision']}): {resolution.summary}")
        self.message_user(request, resolution.summary, level)
        return resolution

    def _page(self, request, payment: Payment, template: str, title: str, **context):
        return TemplateResponse(request, template, {
            **self.admin_site.each_context(request), "opts": self.opts, "original": payment, "payment": payment,
            "title": title, "has_view_permission": self.has_view_permission(request, payment),
            "change_url": reverse("admin:payments_payment_change", args=[payment.pk]), **context,
        })


def _refund_facts(payment: Payment, left: int | None) -> dict:
    """What the confirmation pages show of a payment: its money, who bought what, what a full refund does."""
    order = payment.order
    enrollment = Enrollment.objects.filter(order=order).select_related("user").first()
    in_flight = Refund.objects.filter(payment=payment, status=RefundStatus.REQUESTED).aggregate(
        total=Sum("amount_paise"))["total"] or 0
    money = {key: format_money(value, payment.currency) for key, value in {
        "amount": payment.amount_paise, "refunded": payment.refunded_paise, "in_flight": in_flight,
    }.items()}
    money["order"] = format_money(order.amount_paise, order.currency)
    if left is not None:
        money["left"] = format_money(left, payment.currency)
    return {
        "money": money, "in_flight_paise": in_flight, "order": order, "customer": order.user,
        "internship": order.internship, "enrollment": enrollment,
        "completes_order": order.status == OrderStatus.PAID and not Payment.objects.filter(
            order=order, status=PaymentStatus.CAPTURED).exclude(pk=payment.pk).exists(),
    }


def _refund_outcome(payment: Payment, refund: Refund) -> tuple[int, str]:
    """The message for a refund's outcome: processed, on its way (asked again by payment_sync), or refused."""
    money = format_money(refund.amount_paise, refund.currency)
    if refund.status == RefundStatus.PROCESSED:
        payment.refresh_from_db()
        if payment.status == PaymentStatus.REFUNDED:
            order = payment.order
            order.refresh_from_db()
            tail = (f" Order {order.pk} is refunded, its enrollment revoked and the customer's email queued."
                    if order.status == OrderStatus.REFUNDED else f" Order {order.pk} stays {order.status}.")
        else:
            tail = f" {format_money(payment_refundable_paise(payment_id=payment.pk), payment.currency)} left to refund."
        return messages.SUCCESS, f"Refunded {money} of payment {payment.pk} ({refund.razorpay_refund_id}).{tail}"
    if refund.status == RefundStatus.REQUESTED:
        return messages.WARNING, (
            f"Refund {refund.pk} of {money} is recorded, but the gateway did not answer ({refund.last_error}): "
            f"payment_sync asks again with the same key, so it is made once.")
    why = refund.last_error.removeprefix("refused: ")
    return messages.ERROR, f"The gateway refused the refund of {money}: {why}. Nothing was refunded."


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = ("id", "payment_link", "amount", "status", "razorpay_refund_id", "requested_by", "reason",
                    "attempts", "last_error", "created_at", "processed_at")
    list_filter = ("status", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=payment__id", "=razorpay_refund_id", "=idempotency_key", "=requested_by")
    list_select_related = ("payment",)
    date_hierarchy = "created_at"
    show_full_result_count = False

    def lookup_allowed(self, lookup, value, request=None):
        # The payment page links to its refunds by this filter.
        return lookup == "payment__id__exact" or super().lookup_allowed(lookup, value, request)

    @admin.display(description="payment", ordering="payment_id")
    def payment_link(self, refund: Refund):
        return format_html('<a href="{}">{}</a>', reverse("admin:payments_payment_change", args=[refund.payment_id]),
                           refund.payment)

    @admin.display(description="amount", ordering="amount_paise")
    def amount(self, refund: Refund) -> str:
        return format_money(refund.amount_paise, refund.currency)


@admin.register(Dispute)
class DisputeAdmin(ReadOnlyAdmin):
    list_display = ("razorpay_dispute_id", "payment_link", "status", "amount", "reason", "phase", "respond_by",
                    "event_at")
    list_filter = ("status", "phase")
    search_fields = ("=razorpay_dispute_id", "=payment__razorpay_payment_id", "=payment__id")
    list_select_related = ("payment",)
    show_full_result_count = False

    @admin.display(description="payment", ordering="payment_id")
    def payment_link(self, dispute: Dispute):
        return format_html('<a href="{}">{}</a>', reverse("admin:payments_payment_change", args=[dispute.payment_id]),
                           dispute.payment)

    @admin.display(description="amount", ordering="amount_paise")
    def amount(self, dispute: Dispute) -> str:
        return format_money(dispute.amount_paise, dispute.currency)


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "event", "received_at", "processed_at", "attempts", "error")
    list_filter = ("event", ("processed_at", admin.EmptyFieldListFilter))
    search_fields = ("=event_id",)
    date_hierarchy = "received_at"
    show_full_result_count = False


@admin.register(WebhookRejection)
class WebhookRejectionAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "reason", "detail")
    list_filter = ("reason",)


@admin.register(PaymentReport)
class PaymentReportAdmin(ReadOnlyAdmin):
    list_display = ("period_end", "period_start", "captured", "refunded", "counts_by_status", "run")
    list_select_related = ("job_run",)
    date_hierarchy = "period_end"
    show_full_result_count = False

    @admin.display(description="job run")
    def run(self, report: PaymentReport):
        if report.job_run_id is None:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:ops_jobrun_change", args=[report.job_run_id]),
                           report.job_run)

    @admin.display(description="captured")
    def captured(self, report: PaymentReport) -> str:
        return _amounts(report, "captured_paise")

    @admin.display(description="refunded")
    def refunded(self, report: PaymentReport) -> str:
        return _amounts(report, "refunded_paise")


def _amounts(report: PaymentReport, key: str) -> str:
    return ", ".join(format_money(v[key], currency) for currency, v in sorted(report.amounts.items())) or "-"
