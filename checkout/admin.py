"""The admin's shared base for records that only jobs write (ledgers, reports, mirrors of the gateway)."""
from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """People read, filter and export these rows; nothing in the admin adds, edits or deletes them."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    """Lines shown with their parent record, read-only like it."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields or ()

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
