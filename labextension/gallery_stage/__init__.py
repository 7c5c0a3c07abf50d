"""The gallery in JupyterLab 4 / Notebook 7: the "Submit to gallery" button, and the examples
(Launcher section, side panel, example tabs, Use, Update my copy), with the Jupyter server part
that talks to the gallery under the user's hub identity."""

from typing import Any

__version__ = "0.1.0"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "gallery-stage"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "gallery_stage"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from .handlers import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("gallery_stage: /gallery-stage/{context,submit,examples,jobs} registered")
