"""WSGI entry point for gunicorn."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gallery.settings")
application = get_wsgi_application()

from .views import PreviewFiles  # noqa: E402  (needs the settings loaded above)

# Immutable preview files are answered straight from disk, ahead of the middleware.
application = PreviewFiles(application)
