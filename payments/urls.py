from django.urls import path

from payments import views

app_name = "payments"

urlpatterns = [
    path("webhooks/razorpay/", views.razorpay_webhook, name="razorpay-webhook"),
]
