from django.urls import path
from feeds import views

urlpatterns = [
    path("", views.index, name="index"),
    path("feeds", views.add, name="add"),
    path("feeds/<str:job_id>", views.job, name="job"),
    path("sample.rss", views.sample, name="sample"),
]
