from django.contrib import admin

from orders.models import Enrollment, Internship, Order


@admin.register(Internship)
class InternshipAdmin(admin.ModelAdmin):
    list_display = ("title", "price_paise", "currency", "is_active", "created_at")
    list_filter = ("is_active", "currency")
    search_fields = ("title",)


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "internship", "amount_paise", "currency", "status", "created_at", "paid_at", "expired_at")
    list_filter = ("status", "currency", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=id", "user__username", "user__email", "internship__title", "payments__razorpay_order_id")
    raw_id_fields = ("user", "cart")
    list_select_related = ("user", "internship")
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(Enrollment)
class EnrollmentAdmin(admin.ModelAdmin):
    list_display = ("id", "order", "user", "internship", "created_at", "confirmation_sent_at")
    list_filter = (("created_at", admin.DateFieldListFilter),)
    search_fields = ("=order__id", "user__username", "user__email", "internship__title")
    raw_id_fields = ("order", "user")
    list_select_related = ("order", "user", "internship")
    show_full_result_count = False
