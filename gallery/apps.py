"""Django app configuration."""

from django.apps import AppConfig


class GalleryConfig(AppConfig):
    name = "gallery"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Examples gallery"

    def ready(self) -> None:
        from . import caching, tasks  # noqa: F401 - the tasks register with Celery

        caching.connect()
