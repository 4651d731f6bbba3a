"""The admin's shared base for records that only jobs write (ledgers, reports, mirrors of the gateway),
and the audit entry every admin action leaves."""
from django.contrib import admin
from django.contrib.admin.models import CHANGE, LogEntry


def audit(request, objects, message: str) -> None:
    """An entry per object in the admin's log (its history page, "Recent actions"): who did what, when.

    Admin actions call this (or ModelAdmin.log_change for a message per object); the admin's own
    add, change and delete views log themselves.
    """
    LogEntry.objects.log_actions(
        user_id=request.user.pk, queryset=list(objects), action_flag=CHANGE, change_message=message,
    )


class ReadOnlyAdmin(admin.ModelAdmin):
    """People read, filter and export these rows; nothing in the admin adds, edits or deletes them,
    superusers included. What does change them is an admin action, behind its own permission."""

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
