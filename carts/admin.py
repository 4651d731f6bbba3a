from django.contrib import admin

from checkout.admin import ReadOnlyAdmin, ReadOnlyInline
from carts.models import Cart, CartDayTally, CartSnapshot, CartSnapshotLine, PendingCacheDelete
from ops.runtime.admin import link_result

link_result("cart_cleanup", "snapshot_id", CartSnapshot)


@admin.register(Cart)
class CartAdmin(admin.ModelAdmin):
    list_display = ("token", "user", "internship", "status", "created_at", "updated_at", "abandoned_at", "converted_at")
    list_filter = ("status", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=token", "user__username", "user__email")
    raw_id_fields = ("user",)
    list_select_related = ("user", "internship")
    date_hierarchy = "created_at"
    show_full_result_count = False


class CartSnapshotLineInline(ReadOnlyInline):
    model = CartSnapshotLine
    fields = ("internship", "active", "abandoned", "converted", "deleted", "flagged")


@admin.register(CartSnapshot)
class CartSnapshotAdmin(ReadOnlyAdmin):
    list_display = ("taken_at", "active", "abandoned", "converted", "deleted", "flagged", "cache_keys_pending", "run")
    date_hierarchy = "taken_at"
    list_select_related = ("run",)
    inlines = [CartSnapshotLineInline]
    show_full_result_count = False


@admin.register(CartDayTally)
class CartDayTallyAdmin(ReadOnlyAdmin):
    list_display = ("day", "internship", "created_deleted", "abandoned_deleted")
    list_filter = ("internship",)
    date_hierarchy = "day"
    list_select_related = ("internship",)


@admin.register(PendingCacheDelete)
class PendingCacheDeleteAdmin(ReadOnlyAdmin):
    list_display = ("key", "created_at")
    search_fields = ("=key",)
