"""The server part: `GET /gallery-stage/context` fills the dialog (with the hub groups the
contributor may show the example to, asked of the gallery), `POST /gallery-stage/submit` sends
the saved notebook to the gallery.

Both are Jupyter API handlers: authenticated, authorised against the contents, and (for POST)
XSRF-checked like every other request the page makes to its server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import posixpath
import queue
from datetime import datetime, timezone
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import ensure_async, url_path_join
from tornado import web

from . import browse, detect
from .gallery import Config, StageError, call, send_submission

MAX_SIBLINGS = 200
SIBLING_DEPTH = 2
SKIP_DIRS = {"node_modules", "__pycache__", "site-packages"}
KERNEL_TIMEOUT = 10.0
GROUPS_TIMEOUT = 15.0  # the dialog opens without the groups rather than wait longer
MAX_GROUPS, MAX_GROUP_NAME = 20, 255  # as the gallery takes them


def check_groups(value: Any) -> list[str]:
    """The hub groups chosen as the audience (empty: everyone), sorted, once each; StageError
    for anything that is not a short list of group names. Whether the contributor belongs to
    them is the gallery's to say (403)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise StageError(400, "invalid", "The audience must be a list of hub group names.")
    names = set()
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise StageError(400, "invalid", "A hub group's name is empty.")
        name = name.strip()
        if (len(name) > MAX_GROUP_NAME or name.startswith(".")
                or any(c.isspace() or c == "/" or ord(c) < 32 for c in name)):
            raise StageError(400, "invalid", f"{name[:40]!r} is not the name of a hub group.")
        names.add(name)
    if len(names) > MAX_GROUPS:
        raise StageError(400, "invalid", f"Choose at most {MAX_GROUPS} groups.")
    return sorted(names)


async def audience(config: Config) -> dict[str, Any]:
    """The groups the gallery lets this user show a new example to (`GET /api/v1/me`), or
    none with the reason it could not say."""
    if not (config.gallery_url and config.token):
        return {"groups": [], "error": ""}  # the dialog already says the gallery is not set up
    try:
        me = await asyncio.wait_for(call(config, "GET", "me"), GROUPS_TIMEOUT)
        groups = me.get("groups") if isinstance(me, dict) else None
        if not isinstance(groups, list):
            raise StageError(502, "unreachable", "The gallery did not name your groups.")
        return {"groups": check_groups(groups), "error": ""}
    except asyncio.TimeoutError:  # noqa: UP041 (not yet TimeoutError on Python 3.10)
        return {"groups": [], "error": "The gallery did not say in time which hub groups you "
                                       "are in."}
    except StageError as error:
        return {"groups": [], "error": error.message}


def clean_relpath(name: Any) -> str:
    """A sibling file's path relative to the notebook, or StageError for anything that could
    leave the notebook's folder."""
    if not isinstance(name, str) or not name.strip():
        raise StageError(400, "invalid", "A file name is empty.")
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise StageError(400, "invalid", f"The file {name!r} is not inside the notebook's folder.")
    return "/".join(parts)


async def kernel_report(kernel_manager: Any, kernel_id: str, log: Any = None) -> dict[str, Any]:
    """Ask a running Python kernel which distributions it has imported ({} when it cannot say).

    The question travels as a silent user expression on the shell channel, so it leaves no
    trace in the notebook, the history or the kernel's namespace.
    """
    if not kernel_id or kernel_id not in kernel_manager:
        return {}
    kernel = kernel_manager.get_kernel(kernel_id)
    try:
        language = str(kernel.kernel_spec.language or "")
    except Exception:
        language = ""
    if language.lower() != "python":
        return {}
    client = kernel.client()
    client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        msg_id = client.execute("", silent=True, store_history=False, allow_stdin=False,
                                user_expressions={"gallery_stage": detect.KERNEL_EXPRESSION})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KERNEL_TIMEOUT
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            try:
                msg = await ensure_async(client.get_shell_msg(timeout=remaining))
            except queue.Empty:
                return {}
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                break
        result = msg["content"].get("user_expressions", {}).get("gallery_stage", {})
        if result.get("status") != "ok":
            return {}
        return detect.parse_kernel_report(result.get("data", {}).get("text/plain", ""))
    except Exception as exc:  # the dialog still opens, with an unpinned draft
        if log is not None:
            log.warning("gallery_stage: kernel %s did not report its packages: %s",
                        kernel_id, exc)
        return {}
    finally:
        client.stop_channels()


class StageHandler(APIHandler):
    auth_resource = "contents"

    def fail(self, error: StageError) -> None:
        self.set_status(error.status)
        self.finish(json.dumps({"kind": error.kind, "message": error.message}))

    async def read_notebook(self, path: str) -> dict[str, Any]:
        if not isinstance(path, str) or not path.endswith(".ipynb"):
            raise StageError(400, "invalid", "Open a notebook (.ipynb) to submit it.")
        try:
            model = await ensure_async(self.contents_manager.get(path, content=True,
                                                                 type="notebook"))
        except web.HTTPError as exc:
            raise StageError(exc.status_code if exc.status_code < 500 else 400, "invalid",
                             f"{path}: {exc.log_message or exc.reason}") from None
        return model

    async def read_bytes(self, path: str) -> bytes:
        try:
            model = await ensure_async(self.contents_manager.get(path, content=True, type="file",
                                                                 format="base64"))
        except web.HTTPError as exc:
            raise StageError(exc.status_code if exc.status_code < 500 else 400, "invalid",
                             f"{path}: {exc.log_message or exc.reason}") from None
        return base64.b64decode(model["content"])

    async def siblings(self, folder: str, nb_path: str) -> list[dict[str, Any]]:
        """Files beside the notebook and in its subfolders (hidden ones never), relative."""
        found: list[dict[str, Any]] = []
        pending = [(folder, 0)]
        while pending and len(found) < MAX_SIBLINGS:
            current, depth = pending.pop(0)
            try:
                listing = await ensure_async(self.contents_manager.get(current, content=True,
                                                                       type="directory"))
            except web.HTTPError:
                continue
            for item in sorted(listing["content"], key=lambda i: i["path"]):
                rel = posixpath.relpath(item["path"], folder or ".")
                if item["name"].startswith("."):
                    continue
                if item["type"] == "directory":
                    if depth < SIBLING_DEPTH and item["name"] not in SKIP_DIRS:
                        pending.append((item["path"], depth + 1))
                    continue
                if item["path"] == nb_path or len(found) >= MAX_SIBLINGS:
                    continue
                found.append({"path": rel, "size": item.get("size")})
        return found


class ContextHandler(StageHandler):
    """What the dialog needs: sibling files, the environment spec and data-link suggestions."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        path = self.get_query_argument("path", "")
        try:
            model = await self.read_notebook(path)
        except StageError as error:
            return self.fail(error)
        nb = model["content"]
        folder = posixpath.dirname(path)
        files = await self.siblings(folder, path)
        names = {f["path"] for f in files}
        environment: dict[str, Any] | None = None
        for env_name in detect.ENV_FILES:
            if env_name in names:
                text = (await self.read_bytes(url_path_join(folder, env_name) if folder
                                              else env_name)).decode("utf-8", "replace")
                environment = {"source": "file", "name": env_name, "content": text}
                files = [f for f in files if f["path"] != env_name]
                break
        if environment is None:
            report: dict[str, Any] = {}
            kernel_id = self.get_query_argument("kernel", "")
            if kernel_id and self.authorizer.is_authorized(self, self.current_user, "execute",
                                                           "kernels"):
                report = await kernel_report(self.kernel_manager, kernel_id, self.log)
            local = {posixpath.splitext(n.split("/")[0])[0] for n in names
                     if n.endswith(".py") or "/" in n}
            environment = {"source": "kernel" if report else "code", "name": "requirements.txt",
                           "content": detect.draft_requirements(nb, report, local)}
        referenced = detect.referenced_files(nb, names)
        for item in files:
            item["referenced"] = item["path"] in referenced
        config = Config.from_env()
        self.finish(json.dumps({
            "configured": bool(config.gallery_url and config.token),
            "audience": await audience(config),
            "files": files,
            "environment": environment,
            "data_links": detect.data_links(nb),
            "previous": nb.get("metadata", {}).get("gallery") or {},
            "title": _first_heading(nb) or posixpath.splitext(posixpath.basename(path))[0],
        }))


class SubmitHandler(StageHandler):
    """Send the saved notebook and the chosen files to the gallery under the hub identity."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        try:
            reply = await self.submit(self.form())
        except StageError as error:
            self.log.info("gallery_stage: submission refused (%s): %s", error.kind, error.message)
            return self.fail(error)
        self.set_status(201)
        self.finish(json.dumps(reply))

    def form(self) -> dict[str, Any]:
        try:
            form = self.get_json_body() or {}
        except web.HTTPError:
            raise StageError(400, "invalid", "The request is not JSON.") from None
        if not isinstance(form, dict):
            raise StageError(400, "invalid", "The request must be a JSON object.")
        return form

    async def submit(self, form: dict[str, Any]) -> dict[str, Any]:
        config = Config.from_env()
        config.require()
        # A new revision keeps its example's audience; a new example goes to everyone or to
        # the chosen groups of the contributor's.
        groups = [] if form.get("example") else check_groups(form.get("groups"))
        path = form.get("path", "")
        model = await self.read_notebook(path)
        folder = posixpath.dirname(path)
        notebook = await self.read_bytes(path)
        try:
            notebook_text = notebook.decode("utf-8")
        except UnicodeDecodeError:
            raise StageError(400, "invalid", f"{path} is not UTF-8 text.") from None
        environment = form.get("environment") or None
        env_name = ""
        if environment is not None:
            env_name = str(environment.get("name", ""))
            content = environment.get("content")
            if env_name not in detect.ENV_FILES or not isinstance(content, str):
                raise StageError(400, "invalid", "The environment must be an environment.yml or "
                                                 "a requirements.txt.")
            environment = {"path": env_name, "content": content} if content.strip() else None
        files = []
        total = len(notebook) + len((environment or {}).get("content", "").encode())
        for rel in dict.fromkeys(form.get("files") or []):
            rel = clean_relpath(rel)
            if rel == env_name and environment is not None:
                continue  # sent as the environment
            data = await self.read_bytes(url_path_join(folder, rel) if folder else rel)
            total += len(data)
            if total > config.max_bytes:
                raise StageError(413, "too-large",
                                 f"Too large: with {rel} the submission passes "
                                 f"{config.max_bytes // (1024 * 1024)} MB. Leave out big files "
                                 "and declare them as data links instead.")
            files.append({"path": rel, "content_base64": base64.b64encode(data).decode()})
        if total > config.max_bytes:
            raise StageError(413, "too-large", f"Too large: the notebook passes "
                                               f"{config.max_bytes // (1024 * 1024)} MB.")
        kernelspec = model["content"].get("metadata", {}).get("kernelspec") or {}
        body = {
            "title": str(form.get("title") or "").strip(),
            "summary": str(form.get("summary") or ""),
            "tags": [str(t) for t in form.get("tags") or []],
            "licence": str(form.get("licence") or ""),
            "example": str(form.get("example") or ""),
            "groups": groups,
            "data_links": list(form.get("data_links") or []),
            "kernel": str(kernelspec.get("name") or ""),
            "notebook": notebook_text,
            "notebook_name": posixpath.basename(path),
            "environment": environment,
            "files": files,
        }
        if not body["title"]:
            raise StageError(400, "invalid", "Give the example a title.")
        answer = await send_submission(config, body)
        self.log.info("gallery_stage: %s submitted %s as %s (submission %s)",
                      self.current_user.username, path, answer.get("example"), answer.get("id"))
        link = config.link(str(answer.get("url") or ""))
        return {
            "submission": answer,
            "url": link,
            "metadata": {
                "example": answer.get("example"), "submission": answer.get("id"), "url": link,
                "revision": answer.get("revision"),
                "title": body["title"], "summary": body["summary"], "tags": body["tags"],
                "licence": body["licence"], "files": [f["path"] for f in files],
                "groups": [str(g) for g in answer.get("groups") or []],  # as the gallery says
                "data_links": body["data_links"],
                # timezone.utc, not datetime.UTC: single-user servers may run Python 3.10
                "submitted": datetime.now(timezone.utc).isoformat(  # noqa: UP017
                    timespec="seconds"),
            },
        }


def _first_heading(nb: dict[str, Any]) -> str:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else source
            for line in source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()[:200]
    return ""


def setup_handlers(web_app: Any) -> None:
    base = web_app.settings["base_url"]
    web_app.add_handlers(".*$", [
        (url_path_join(base, "gallery-stage", "context"), ContextHandler),
        (url_path_join(base, "gallery-stage", "submit"), SubmitHandler),
        *browse.handlers(base),
    ])
