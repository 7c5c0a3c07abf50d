"""The gallery: a curated, reviewed examples gallery served as a JupyterHub service."""

from .celery import app as celery_app

__all__ = ["celery_app"]
