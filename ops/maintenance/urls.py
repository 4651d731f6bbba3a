from django.urls import path

from ops.maintenance import views

urlpatterns = [
    path("health/live/", views.health_live, name="health-live"),
    path("health/", views.health, name="health"),
    path("metrics", views.metrics, name="metrics"),
]
