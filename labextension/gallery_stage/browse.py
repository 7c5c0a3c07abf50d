"""Browsing, using and updating the gallery's examples from JupyterLab, through this Jupyter
server.

The page asks its own server (Jupyter's login and XSRF check, as for every other request of
JupyterLab); these handlers check what it asks and pass it on to the gallery's JSON API with
the server's own hub token, which never reaches the page. The gallery's refusals come back
with their status and message. Nothing here relaxes CORS or XSRF: the page never talks to the
gallery's API itself.

The one thing the page loads from the gallery directly is a preview, in a frame sandboxed as
on the gallery's pages (no scripts, no same-origin; a link out opens a new tab): previews
are public, content-addressed files that need no token, served on
the hub's own origin (or the gallery's preview origin) with their own CSP; a hub group's
example's preview comes at an address the gallery signed for this user, good for minutes.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import urlsplit

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .gallery import Config, StageError, call, exchange

SLUG = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
TAG = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
JOB_ID = re.compile(r"^[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@ -]{0,99}$")
STATES = ("", "approved", "staged")
FLAGS = {"": False, "0": False, "false": False, "1": True, "true": True}
MAX_QUERY = 200


def check_slug(slug: str) -> str:
    if not SLUG.match(slug):
        raise StageError(400, "invalid", "An example's name has letters, digits, '-' and '_' "
                                         "only.")
    return slug


def check_folder(folder: Any) -> str:
    """The folder name a Use asks for ('' means the example's own name), or StageError."""
    if folder is None:
        return ""
    if not isinstance(folder, str):
        raise StageError(400, "invalid", "The folder name must be text.")
    folder = folder.strip()
    if folder and (not FOLDER.match(folder) or folder.endswith((" ", "."))):
        raise StageError(400, "invalid",
                         "The folder name must be a single name (no '/'), not start with a "
                         "dot, and use letters, digits and . _ - + @ or space (at most 100).")
    return folder


def check_flag(value: str, name: str) -> bool:
    if value.lower() not in FLAGS:
        raise StageError(400, "invalid", f"'{name}' is true or false.")
    return FLAGS[value.lower()]


def check_listing(q: str, tag: str, state: str, page: str) -> dict[str, str]:
    if len(q) > MAX_QUERY or any(ord(c) < 32 for c in q):
        raise StageError(400, "invalid", f"The search is at most {MAX_QUERY} characters of "
                                         "plain text.")
    if tag and not TAG.match(tag):
        raise StageError(400, "invalid", "A tag has letters, digits, '-' and '_' only.")
    if state not in STATES:
        raise StageError(400, "invalid", "The section is 'approved' or 'staged'.")
    if page and (not page.isdigit() or not 1 <= int(page) <= 100000):
        raise StageError(400, "invalid", "The page is a number from 1.")
    return {"q": q.strip(), "tag": tag, "state": state, "page": page}


def safe_link(config: Config, value: Any) -> str | None:
    """A link of the gallery's (page, preview) for the browser: absolute path or http(s) URL
    only, made absolute when the gallery's public address differs from the hub's."""
    if not isinstance(value, str) or not value:
        return None
    link = config.link(value)
    parts = urlsplit(link)
    if parts.scheme in ("http", "https") and parts.netloc or (
            not parts.scheme and not parts.netloc and link.startswith("/")):
        return link
    return None


def local_path(home_path: Any, root_dir: str, home: str | None = None) -> str:
    """The copy's folder ('~/examples/x', as the gallery reports it) relative to this server's
    root, or '' when it lies outside it."""
    if not isinstance(home_path, str) or not home_path.startswith("~/"):
        return ""
    home = home or os.path.expanduser("~")
    absolute = os.path.normpath(os.path.join(home, home_path[2:]))
    root = os.path.normpath(os.path.abspath(os.path.expanduser(root_dir)))
    rel = os.path.relpath(absolute, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return ""
    return "" if rel == "." else rel.replace(os.sep, "/")


class GalleryHandler(APIHandler):
    """Every call: Jupyter's own login, XSRF (for POST) and authorization, then the gallery."""

    auth_resource = "contents"

    def fail(self, error: StageError) -> None:
        self.set_status(error.status)
        self.finish(json.dumps({"kind": error.kind, "message": error.message}))

    async def relay(self, method: str, path: str, **kwargs: Any) -> Any:
        config = Config.from_env()
        answer = await call(config, method, path, **kwargs)
        return config, answer

    async def relay_status(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """As `relay`, with the gallery's 2xx status (the page tells 202 from 200)."""
        return await exchange(Config.from_env(), method, path, **kwargs)

    def folder_in_body(self) -> str:
        """The `folder` of a JSON object body, checked; StageError otherwise."""
        try:
            body = self.get_json_body() or {}
        except web.HTTPError:
            raise StageError(400, "invalid", "The request is not JSON.") from None
        if not isinstance(body, dict):
            raise StageError(400, "invalid", "The request must be a JSON object.")
        return check_folder(body.get("folder"))

    def example_links(self, config: Config, example: dict[str, Any]) -> dict[str, Any]:
        example["url"] = safe_link(config, example.get("url"))
        example["preview_url"] = safe_link(config, example.get("preview_url"))
        return example


class ListHandler(GalleryHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        arg = self.get_query_argument
        try:
            query = check_listing(arg("q", ""), arg("tag", ""), arg("state", ""), arg("page", ""))
            config, answer = await self.relay("GET", "examples", query=query)
        except StageError as error:
            return self.fail(error)
        answer["results"] = [self.example_links(config, e) for e in answer.get("results", [])]
        self.finish(json.dumps(answer))


class DetailHandler(GalleryHandler):
    @web.authenticated
    @authorized
    async def get(self, slug: str) -> None:
        try:
            config, answer = await self.relay("GET", f"examples/{check_slug(slug)}")
        except StageError as error:
            return self.fail(error)
        self.finish(json.dumps(self.example_links(config, answer)))


class UsePlanHandler(GalleryHandler):
    @web.authenticated
    @authorized
    async def get(self, slug: str) -> None:
        try:
            folder = check_folder(self.get_query_argument("folder", ""))
            _, answer = await self.relay("GET", f"examples/{check_slug(slug)}/use-plan",
                                         query={"folder": folder})
        except StageError as error:
            return self.fail(error)
        self.finish(json.dumps(answer))


class UseHandler(GalleryHandler):
    @web.authenticated
    @authorized
    async def post(self, slug: str) -> None:
        try:
            folder = self.folder_in_body()
            _, job = await self.relay("POST", f"examples/{check_slug(slug)}/use",
                                      body={"folder": folder})
        except StageError as error:
            return self.fail(error)
        self.log.info("gallery_stage: %s uses %s (job %s)", self.current_user.username, slug,
                      job.get("id"))
        self.set_status(202)
        self.finish(json.dumps(job))


class CopiesHandler(GalleryHandler):
    """The user's copies of an example, each with whether a newer version can be merged in."""

    @web.authenticated
    @authorized
    async def get(self, slug: str) -> None:
        try:
            _, copies = await self.relay("GET", f"examples/{check_slug(slug)}/copies")
        except StageError as error:
            return self.fail(error)
        copies = [c for c in copies if isinstance(c, dict)] if isinstance(copies, list) else []
        root = self.contents_manager.root_dir
        for copy in copies:
            copy["local_path"] = local_path(copy.get("path"), root)
        self.finish(json.dumps(copies))


class UpdatePlanHandler(GalleryHandler):
    """What an update would change: 202 (with the job reading the copy) until the gallery has
    the plan, then 200 with it, status passed on as the gallery gives it."""

    @web.authenticated
    @authorized
    async def get(self, slug: str) -> None:
        arg = self.get_query_argument
        try:
            folder = check_folder(arg("folder", ""))
            refresh = check_flag(arg("refresh", ""), "refresh")
            status, answer = await self.relay_status(
                "GET", f"examples/{check_slug(slug)}/update-plan",
                query={"folder": folder, "refresh": "true" if refresh else ""})
        except StageError as error:
            return self.fail(error)
        self.set_status(202 if status == 202 else 200)
        self.finish(json.dumps(answer))


class UpdateHandler(GalleryHandler):
    """Merge the approved version into the user's copy: a job, followed at /jobs/<id>."""

    @web.authenticated
    @authorized
    async def post(self, slug: str) -> None:
        try:
            folder = self.folder_in_body()
            _, job = await self.relay("POST", f"examples/{check_slug(slug)}/update",
                                      body={"folder": folder})
        except StageError as error:
            return self.fail(error)
        self.log.info("gallery_stage: %s updates %s in %r (job %s)",
                      self.current_user.username, slug, folder, job.get("id"))
        self.set_status(202)
        self.finish(json.dumps(job))


class JobHandler(GalleryHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        try:
            if not JOB_ID.match(job_id):
                raise StageError(400, "invalid", "A job is named by its UUID.")
            config, job = await self.relay("GET", f"jobs/{job_id.lower()}")
        except StageError as error:
            return self.fail(error)
        result = job.get("result") if isinstance(job.get("result"), dict) else {}
        # Where the copy is for this server's file browser and document manager.
        job["local_path"] = local_path(result.get("path"), self.contents_manager.root_dir)
        job["open_url"] = safe_link(config, job.get("open_url"))
        self.finish(json.dumps(job))


def handlers(base: str) -> list[tuple[str, type[GalleryHandler]]]:
    ns = url_path_join(base, "gallery-stage")
    part = r"([^/]+)"
    return [
        (url_path_join(ns, "examples"), ListHandler),
        (url_path_join(ns, "examples", part), DetailHandler),
        (url_path_join(ns, "examples", part, "use-plan"), UsePlanHandler),
        (url_path_join(ns, "examples", part, "use"), UseHandler),
        (url_path_join(ns, "examples", part, "copies"), CopiesHandler),
        (url_path_join(ns, "examples", part, "update-plan"), UpdatePlanHandler),
        (url_path_join(ns, "examples", part, "update"), UpdateHandler),
        (url_path_join(ns, "jobs", part), JobHandler),
    ]
