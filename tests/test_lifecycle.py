"""The whole life of an example through HTTP, with a real Redis and a real Celery worker process.

`make test` runs this module on SQLite and again on PostgreSQL.
"""

import re
from pathlib import Path

import git
import pytest
import requests
from django.conf import settings

from .base import make_user, notebook_bytes
from .conftest import wait_for

PASSWORD = "lifecycle-" + "p" * 8


def login(base: str, username: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base}/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    r = session.post(f"{base}/accounts/login/", data={
        "username": username, "password": PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{base}/accounts/login/"}, allow_redirects=False)
    assert r.status_code == 302, r.text[:500]
    session.headers["X-CSRFToken"] = session.cookies["gallery-csrftoken"]
    session.headers["Referer"] = base + "/"
    return session


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_goes_from_stage_to_use_through_http(live_server, celery_worker):
    for name, reviewer in (("carla", False), ("rhea", True), ("uma", False)):
        make_user(name, reviewer=reviewer, password=PASSWORD)
    base = live_server.url
    contributor, reviewer, user = login(base, "carla"), login(base, "rhea"), login(base, "uma")

    # Stage: a notebook with its environment, a helper file and two data links.
    shared = Path(settings.GALLERY_DATA_DIR).parent / "shared-data"
    shared.mkdir()
    (shared / "table.csv").write_text("a,b\n1,2\n")
    notebook = notebook_bytes(4)
    r = contributor.post(f"{base}/api/v1/submissions", files={
        "notebook": ("lifecycle.ipynb", notebook),
        "environment": ("requirements.txt", b"numpy>=1.24\n"),
        "files": ("helper.py", b"ANSWER = 42\n"),
    }, data={"title": "Life cycle", "summary": "From stage to use", "tags": "demo",
             "data_links": f'[{{"name": "table", "target": "{shared}"}},'
                           '{"name": "docs", "target": "https://example.org/docs"}]'})
    assert r.status_code == 201, r.text
    submission = r.json()

    # Checks and preview run in the worker.
    def checked():
        body = contributor.get(f"{base}/api/v1/submissions/{submission['id']}").json()
        return body if body["checks_state"] == "done" else None

    body = wait_for(checked, what="checks")
    assert {c["name"]: c["status"] for c in body["checks"]}["data links"] == "pass"
    preview = wait_for(lambda: (p := user.get(base + body["preview_url"])).status_code == 200
                       and p, what="preview")
    assert "sandbox" in preview.headers["Content-Security-Policy"]
    assert "<script" not in preview.text

    # A reviewer approves through the page; the worker commits into the repository.
    page = reviewer.get(f"{base}/submissions/{submission['id']}/")
    assert page.status_code == 200
    r = reviewer.post(f"{base}/submissions/{submission['id']}/review",
                      data={"decision": "approve", "comment": "Looks good"})
    assert r.status_code == 200  # redirected back to the submission page
    slug = submission["example"]
    detail = wait_for(lambda: (d := user.get(f"{base}/api/v1/examples/{slug}").json())
                      ["commit"] and d, what="commit")
    assert detail["state"] == "approved"
    commit = git.Repo(settings.GALLERY_REPO_PATH).commit(detail["commit"])
    assert commit.author.name == "carla" and commit.committer.name == "rhea"
    assert f"Gallery-Submission: {submission['id']}" in commit.message

    # Use: 202 with a job, the worker copies into the home, the job says where.
    r = user.post(f"{base}/api/v1/examples/{slug}/use", json={})
    assert r.status_code == 202, r.text
    job_url = f"{base}/api/v1/jobs/{r.json()['id']}"
    job = wait_for(lambda: (j := user.get(job_url).json())["state"] in ("done", "failed") and j,
                   what="use job")
    assert job["state"] == "done", job["message"]
    home = Path(settings.GALLERY_HOME_TEMPLATE.format(username="uma"))
    copy = home / "examples" / slug
    assert job["target"] == f"~/examples/{slug}"
    assert (copy / "lifecycle.ipynb").read_bytes() == notebook
    assert (copy / "helper.py").read_text() == "ANSWER = 42\n"
    assert (copy / "requirements.txt").is_file()
    assert (copy / "data" / "table").resolve() == shared
    assert "https://example.org/docs" in (copy / "DATA.md").read_text()
    assert f'"commit": "{detail["commit"]}"' in (copy / ".gallery-provenance.json").read_text()

    # A second Use never overwrites: it gets a new folder, and the job says which.
    r = user.post(f"{base}/api/v1/examples/{slug}/use", json={})
    job2_url = f"{base}/api/v1/jobs/{r.json()['id']}"
    job2 = wait_for(lambda: (j := user.get(job2_url).json())["state"] == "done" and j,
                    what="second use")
    assert job2["target"] == f"~/examples/{slug}-2"
    assert (home / "examples" / f"{slug}-2" / "lifecycle.ipynb").is_file()
