from django.urls import path

from ops import views

urlpatterns = [
    path("health/live/", views.health_live, name="health-live"),
]
