"""Admin for internships, orders and enrollments.

Orders and enrollments are money records: their amounts, currencies, statuses and times are
written by the checkout and the jobs (payment_sync, order_cleanup, enrollment creation), never
by hand, so nobody adds, edits or deletes them here. Internships are the catalogue and stay
editable; one that has orders is not deleted (its orders would lose what was bought): mark it
inactive instead.
"""
from django.contrib import admin

from checkout.admin import ReadOnlyAdmin
from orders.models import Enrollment, Internship, Order


@admin.register(Internship)
class InternshipAdmin(admin.ModelAdmin):
    list_display = ("title", "price_paise", "currency", "is_active", "created_at")
    list_filter = ("is_active", "currency")
    search_fields = ("title",)

    def get_deleted_objects(self, objs, request):
        # Listed as protected, the delete pages say why and delete nothing (single or bulk).
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        sold = Internship.objects.filter(pk__in=[o.pk for o in objs], orders__isnull=False).distinct()
        protected = [*protected, *(f"{internship} has orders: mark it inactive instead" for internship in sold)]
        return deleted, model_count, perms_needed, protected


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "internship", "amount_paise", "currency", "status", "created_at", "paid_at", "expired_at")
    list_filter = ("status", "currency", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=id", "user__username", "user__email", "internship__title", "payments__razorpay_order_id")
    list_select_related = ("user", "internship")
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(Enrollment)
class EnrollmentAdmin(ReadOnlyAdmin):
    list_display = ("id", "order", "user", "internship", "created_at", "confirmation_sent_at")
    list_filter = (("created_at", admin.DateFieldListFilter),)
    search_fields = ("=order__id", "user__username", "user__email", "internship__title")
    list_select_related = ("order", "user", "internship")
    show_full_result_count = False
