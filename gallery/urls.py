"""URLs of the gallery; DESIGN §4 lists the public ones, whose names stay stable."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from . import login, views
from .api import api

urlpatterns = [
    path("", views.index, name="index"),
    path("examples/<slug:slug>/", views.example, name="example"),
    path("examples/<slug:slug>/use", views.use, name="use"),
    path("examples/<slug:slug>/update", views.update, name="update"),
    path("examples/<slug:slug>/run", views.rerun, name="rerun"),
    path("examples/<slug:slug>/audience", views.audience, name="audience"),
    path("jobs/<uuid:job_id>/", views.job, name="job"),
    path("stage/", views.stage, name="stage"),
    path("submissions/", views.my_submissions, name="my-submissions"),
    path("notifications/", views.notifications, name="notifications"),
    path("submissions/<int:pk>/", views.submission, name="submission"),
    path("submissions/<int:pk>/review", views.review, name="review"),
    re_path(r"^previews/(?P<sha256>[0-9a-f]{64})\.html$", views.preview, name="preview"),
    re_path(r"^previews/(?P<name>preview-[0-9a-f]{12}\.css)$", views.preview_css,
            name="preview-css"),
    re_path(r"^examples/(?P<slug>[-a-zA-Z0-9_]+)/previews/(?P<sha256>[0-9a-f]{64})\.html$",
            views.group_preview, name="group-preview"),
    re_path(r"^examples/[-a-zA-Z0-9_]+/previews/(?P<name>preview-[0-9a-f]{12}\.css)$",
            views.preview_css),
    path("health", views.health, name="health"),
    path("health/detail", views.health_detail, name="health-detail"),
    path("metrics", views.prometheus_metrics, name="metrics"),
    path("api/v1/", api.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Logging in through the hub; the callback path is the one registered with the hub.
    path("login/", login.login, name="hub-login"),
    path("oauth_callback", login.oauth_callback, name="oauth-callback"),
    path("logout/", login.logout, name="hub-logout"),
    path("admin/login/", login.admin_login),
    path("admin/", admin.site.urls),
]

# Requests Django refuses before any view (a Host it does not serve): JSON under the API.
handler400 = "gallery.inputs.bad_request"
