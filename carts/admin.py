from django.contrib import admin

from carts.models import Cart


@admin.register(Cart)
class CartAdmin(admin.ModelAdmin):
    list_display = ("token", "user", "internship", "status", "created_at", "updated_at", "abandoned_at", "converted_at")
    list_filter = ("status", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=token", "user__username", "user__email")
    raw_id_fields = ("user",)
    list_select_related = ("user", "internship")
    date_hierarchy = "created_at"
    show_full_result_count = False
