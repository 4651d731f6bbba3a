"""URL routes: admin, health, metrics, the Razorpay webhook."""
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("ops.maintenance.urls")),
    path("payments/", include("payments.urls")),
]
