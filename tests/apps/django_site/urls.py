from django.urls import path

from . import views

urlpatterns = [
    path("item/<int:item_id>/", views.item),
    path("hello/", views.hello),
    path("download/", views.download),
    path("async/", views.async_hello),
]
