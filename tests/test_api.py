"""The JSON API: staging, reading, Use and jobs, errors and the served schema."""

import json

import pytest
from django.test import Client

from gallery.models import Example, Job, Submission

from .base import GalleryTestCase, notebook_bytes

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`


class ApiTests(GalleryTestCase):
    def setUp(self):
        self.client.force_login(self.contributor)

    def post_json(self, path, body, client=None):
        return (client or self.client).post(path, data=json.dumps(body),
                                            content_type="application/json")

    def test_it_stages_a_multipart_submission(self):
        from django.core.files.uploadedfile import SimpleUploadedFile

        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post("/api/v1/submissions", {
                "notebook": SimpleUploadedFile("demo.ipynb", notebook_bytes()),
                "environment": SimpleUploadedFile("environment.yml",
                                                  b"dependencies:\n  - numpy\n"),
                "files": [SimpleUploadedFile("helper.py", b"X = 1\n")],
                "title": "Demo", "summary": "A demo", "tags": "demo, python",
                "data_links": json.dumps([{"name": "data", "target": "https://example.org/x"}]),
            })
        self.assertEqual(r.status_code, 201, r.content)
        body = self.json(r)
        self.assertEqual(body["state"], "staged")
        r = self.client.get(f"/api/v1/submissions/{body['id']}")
        self.assertEqual(self.json(r)["checks_state"], "done")
        example = Example.objects.get(slug=body["example"])
        self.assertEqual({f["path"] for f in example.latest_revision.files},
                         {"demo.ipynb", "environment.yml", "helper.py", "example.toml"})

    def test_it_stages_a_json_submission(self):
        r = self.post_json("/api/v1/submissions", {
            "title": "Json demo", "notebook": json.loads(notebook_bytes()),
            "environment": {"path": "requirements.txt", "content": "numpy\n"},
            "files": [{"path": "data/small.bin", "content_base64": "AAEC"}],
        })
        self.assertEqual(r.status_code, 201, r.content)
        self.assertEqual(Submission.objects.count(), 1)

    def test_it_refuses_an_invalid_notebook_with_the_validators_reason(self):
        nb = json.loads(notebook_bytes())
        nb["cells"][1]["execution_count"] = "one"
        r = self.post_json("/api/v1/submissions", {"title": "Bad", "notebook": nb})
        self.assertEqual(r.status_code, 400)
        self.assertIn("cell 2", self.json(r)["error"])
        self.assertIn("execution_count", self.json(r)["error"])
        self.assertEqual(Example.objects.count(), 0)

    def test_it_refuses_an_upload_over_the_limit_while_streaming(self):
        from django.core.files.uploadedfile import SimpleUploadedFile

        with self.settings(GALLERY_MAX_UPLOAD_BYTES=10_000):
            r = self.client.post("/api/v1/submissions", {
                "notebook": SimpleUploadedFile("big.ipynb", b"x" * 50_000), "title": "Big"})
        self.assertEqual(r.status_code, 413)
        self.assertIn("limit", self.json(r)["error"])
        self.assertEqual(Example.objects.count(), 0)

    def test_it_needs_a_login(self):
        r = Client().get("/api/v1/examples")
        self.assertEqual(r.status_code, 401)
        self.assertIn("error", self.json(r))

    def test_it_needs_the_csrf_token_for_browser_writes(self):
        client = Client(enforce_csrf_checks=True)
        client.force_login(self.contributor)
        r = self.post_json("/api/v1/submissions", {"title": "x", "notebook": "{}"}, client)
        self.assertEqual(r.status_code, 403)

    def test_it_lists_and_details_examples(self):
        submission = self.stage_and_approve(title="Listed thing")
        r = self.client.get("/api/v1/examples?state=approved")
        self.assertEqual(r.status_code, 200)
        self.assertEqual([e["slug"] for e in self.json(r)["results"]], [submission.example.slug])
        r = self.client.get("/api/v1/examples?q=listed")
        self.assertEqual(self.json(r)["count"], 1)
        r = self.client.get(f"/api/v1/examples/{submission.example.slug}")
        detail = self.json(r)
        self.assertEqual(detail["version"], 1)
        self.assertEqual(len(detail["commit"]), 40)
        self.assertEqual(detail["notebook"], submission.revision.notebook_name)
        self.assertIn(detail["notebook"], [f["path"] for f in detail["files"]])
        self.assertEqual(detail["data_links"][0]["target"], "https://example.org/data")

    def test_it_queues_a_use_and_reports_the_job(self):
        submission = self.stage_and_approve()
        self.client.force_login(self.user)
        with self.captureOnCommitCallbacks(execute=True):
            r = self.post_json(f"/api/v1/examples/{submission.example.slug}/use", {})
        self.assertEqual(r.status_code, 202, r.content)
        job_id = self.json(r)["id"]
        r = self.client.get(f"/api/v1/jobs/{job_id}")
        job = self.json(r)
        self.assertEqual(job["state"], "done", job["message"])
        self.assertEqual(job["target"], f"~/examples/{submission.example.slug}")
        self.assertIn("/lab/tree/examples/", job["open_url"])

    def test_it_hides_other_users_jobs(self):
        submission = self.stage_and_approve()
        with self.captureOnCommitCallbacks(execute=True):
            r = self.post_json(f"/api/v1/examples/{submission.example.slug}/use", {})
        self.client.force_login(self.user)
        r = self.client.get(f"/api/v1/jobs/{self.json(r)['id']}")
        self.assertEqual(r.status_code, 404)

    def test_it_refuses_use_of_a_staged_example(self):
        with self.captureOnCommitCallbacks(execute=True):
            r = self.post_json("/api/v1/submissions", {"title": "Not yet",
                                                       "notebook": json.loads(notebook_bytes())})
        r = self.post_json(f"/api/v1/examples/{self.json(r)['example']}/use", {})
        self.assertEqual(r.status_code, 409)
        self.assertEqual(Job.objects.filter(kind="use").count(), 0)

    def test_it_serves_an_openapi_schema_generated_from_the_code(self):
        r = self.client.get("/api/v1/schema")
        self.assertEqual(r.status_code, 200)
        schema = self.json(r)
        self.assertTrue(schema["openapi"].startswith("3."))
        for path in ("/api/v1/examples", "/api/v1/examples/{slug}", "/api/v1/submissions",
                     "/api/v1/submissions/{submission_id}", "/api/v1/examples/{slug}/use",
                     "/api/v1/jobs/{job_id}"):
            self.assertIn(path, schema["paths"])
        body = schema["paths"]["/api/v1/submissions"]["post"]["requestBody"]["content"]
        self.assertIn("multipart/form-data", body)
        self.assertIn("title", json.dumps(body["application/json"]))


DEEP = "[" * 3000 + "]" * 3000


class RefusedInputTests(GalleryTestCase):
    """Input the gallery cannot store or read is refused with a JSON 400 naming the field, sent
    as the JSON body or as multipart fields alike. Nothing is written."""

    def setUp(self):
        self.client.force_login(self.contributor)

    def post_json(self, raw: str):
        return self.client.post("/api/v1/submissions", data=raw, content_type="application/json")

    def post_multipart(self, fields: dict):
        from django.core.files.uploadedfile import SimpleUploadedFile

        return self.client.post("/api/v1/submissions", {
            "notebook": SimpleUploadedFile("demo.ipynb", notebook_bytes()), **fields})

    def assert_refused(self, response, *words: str, status: int = 400):
        self.assertEqual(response.status_code, status, response.content[:300])
        self.assertTrue(response["Content-Type"].startswith("application/json"))
        error = self.json(response)["error"]
        for word in words:
            self.assertIn(word, error)
        self.assertEqual(Example.objects.count(), 0)
        self.assertEqual(Submission.objects.count(), 0)
        return error

    def json_body(self, **fields: str) -> str:
        """A JSON body with raw JSON text for some fields (to send what json.dumps would not)."""
        parts = [f'"notebook": {notebook_bytes().decode()}', '"title": "Fine"']
        parts += [f'"{key}": {value}' for key, value in fields.items()]
        return "{" + ", ".join(parts) + "}"

    def test_it_refuses_deep_nesting_in_multipart_fields_as_the_json_body_does(self):
        for field in ("resources", "data_links", "authors"):
            with self.subTest(field=field):
                self.assert_refused(self.post_multipart({"title": "Deep", field: DEEP}),
                                    repr(field), "nested too deeply")
        self.assert_refused(self.post_multipart({"metadata": DEEP}), "'metadata'",
                            "nested too deeply")
        self.assert_refused(self.post_json(DEEP), "nested too deeply")

    def test_it_refuses_nan_and_infinity_in_resources(self):
        for value in ("NaN", "Infinity", "-Infinity"):
            with self.subTest(value=value):
                self.assert_refused(self.post_json(self.json_body(resources=f'{{"cpu": {value}}}')),
                                    "resources['cpu']", "finite")
                self.assert_refused(self.post_multipart({"title": "x",
                                                         "resources": f'{{"cpu": {value}}}'}),
                                    "resources['cpu']", "finite")
                self.assert_refused(self.post_multipart({"metadata": json.dumps(
                    {"title": "x", "resources": {"cpu": float(value)}})}), "resources['cpu']")

    def test_it_refuses_whole_numbers_no_database_column_holds(self):
        for size in (2**63, 10**30, -1, -(2**63) - 1):
            with self.subTest(size=size):
                self.assert_refused(self.post_json(self.json_body(
                    data_links=f'[{{"name": "d", "target": "/data/d", "size": {size}}}]')),
                    "size")
        for number in (2**63, -(2**63) - 1, 10**30):
            with self.subTest(resource=number):
                self.assert_refused(self.post_json(self.json_body(
                    resources=f'{{"memory": {number}}}')), "resources['memory']")

    def test_it_accepts_the_largest_size_a_database_column_holds(self):
        r = self.post_json(self.json_body(
            data_links=f'[{{"name": "d", "target": "/data/d", "size": {2**63 - 1}}}]',
            resources=f'{{"memory": {-(2**63)}}}'))
        self.assertEqual(r.status_code, 201, r.content)
        self.assertEqual(Example.objects.get().latest_revision.data_links.get().size, 2**63 - 1)

    def test_it_refuses_lone_surrogates_in_every_metadata_field(self):
        bad = '"a\\ud800b"'  # JSON for a string no database can encode

        def link(**fields: str) -> str:
            raw = {"name": '"d"', "target": '"/d"', **fields}
            return "[{" + ", ".join(f'"{k}": {v}' for k, v in raw.items()) + "}]"

        for field, raw in [
            ("authors[0]", {"authors": f"[{bad}]"}),
            ("resources", {"resources": f"{{{bad}: 1}}"}),
            ("resources['gpu']", {"resources": f'{{"gpu": {bad}}}'}),
            ("title", {"title": bad}), ("summary", {"summary": bad}),
            ("tags", {"tags": f"[{bad}]"}), ("licence", {"licence": bad}),
            ("kernel", {"kernel": bad}),
            ("data_links", {"data_links": link(description=bad)}),
            ("data_links", {"data_links": link(checksum=bad)}),
            ("data_links", {"data_links": link(licence=bad)}),
            ("data_links", {"data_links": link(name=bad)}),
        ]:
            with self.subTest(field=field, raw=raw):
                fields = ", ".join(f'"{k}": {v}' for k, v in {"title": '"Fine"', **raw}.items())
                self.assert_refused(self.post_json(
                    f'{{{fields}, "notebook": {notebook_bytes().decode()}}}'), field)
                self.assert_refused(self.post_multipart({"metadata": f"{{{fields}}}"}), field)
                if set(raw) & {"authors", "resources", "data_links"}:  # fields holding JSON
                    self.assert_refused(self.post_multipart({"title": "Fine", **raw}), field)

    def test_it_refuses_nul_characters_in_metadata(self):
        for field, fields in [
            ("title", {"title": "A\x00title"}), ("summary", {"summary": "\x00"}),
            ("data_links[0]['description']",
             {"data_links": [{"name": "d", "target": "/d", "description": "a\x00"}]}),
            ("resources", {"resources": {"g\x00pu": 1}}),
            ("resources['gpu']", {"resources": {"gpu": "a\x00"}}),
            ("authors[0]", {"authors": ["a\x00"]}), ("licence", {"licence": "\x00"}),
            ("kernel", {"kernel": "py\x00"}), ("tags[0]", {"tags": ["a\x00b"]}),
        ]:
            with self.subTest(field=field):
                body = {"title": "Fine", "notebook": json.loads(notebook_bytes()), **fields}
                self.assert_refused(self.post_json(json.dumps(body)), field, "NUL")
                # As multipart fields: text as it is, tags comma-separated, the rest as JSON.
                multipart = {"title": "Fine", **{
                    k: v if isinstance(v, str) else ",".join(v) if k == "tags" else json.dumps(v)
                    for k, v in fields.items()}}
                self.assert_refused(self.post_multipart(multipart), "NUL")

    def test_it_refuses_an_example_to_revise_that_is_not_a_slug(self):
        for slug in ("a\x00", "a b", "../x", "\u00e9t\u00e9"):
            with self.subTest(slug=slug):
                body = {"title": "Fine", "example": slug, "notebook": json.loads(notebook_bytes())}
                self.assert_refused(self.post_json(json.dumps(body)), "example", "pattern")
                self.assert_refused(self.post_multipart({"metadata": json.dumps(
                    {"title": "Fine", "example": slug})}), "example", "pattern")

    def test_it_answers_malformed_multipart_bodies_with_json(self):
        boundary_part = (b'--BB\r\nContent-Disposition: form-data; name="notebook"; '
                         b'filename="a.ipynb"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                         b'!!not base64!!=\r\n--BB--\r\n')
        for content_type, body, words in [
            ("multipart/form-data", b"anything", ("boundary",)),
            ("multipart/form-data; boundary=", b"anything", ("boundary",)),
            ("multipart/form-data; boundary=" + "x" * 202, b"anything", ("boundary",)),
            ("multipart/form-data; boundary=\"ends in a space \"", b"anything", ("boundary",)),
            ("multipart/form-data; boundary=BB", boundary_part, ("base64",)),
        ]:
            with self.subTest(content_type=content_type):
                r = self.client.post("/api/v1/submissions", data=body, content_type=content_type)
                error = self.assert_refused(r, *words)
                self.assertIn("multipart", error)

    def test_it_answers_a_form_where_json_is_taken_with_a_json_error(self):
        import re
        import uuid

        from gallery.api import api as ninja_api

        example = self.stage_and_approve().example
        calls = [(method, re.sub(r"\{(\w+)\}", lambda m: example.slug if m[1] == "slug"
                                 else str(uuid.uuid4()), path))
                 for path, methods in ninja_api.get_openapi_schema()["paths"].items()
                 for method, operation in methods.items()
                 if set(operation.get("requestBody", {}).get("content", {}))
                 == {"application/json"}]
        self.assertGreaterEqual(len(calls), 3)
        for method, path in calls:
            for body, content_type in [({"folder": "x"}, None),
                                       ("folder=x", "application/x-www-form-urlencoded")]:
                with self.subTest(method=method, path=path, content_type=content_type):
                    send = getattr(self.client, method)
                    r = (send(path, body) if content_type is None
                         else send(path, body, content_type=content_type))
                    self.assertLess(r.status_code, 500, r.content[:200])
                    self.assertNotIn("no such address", r.content.decode())
                    self.assertIn(r.status_code, (400, 404, 415), r.content[:200])
                    self.assertTrue(self.json(r)["error"])

    def test_it_answers_a_missing_thing_with_a_json_error(self):
        for path in ("/api/v1/examples/nothing-here", "/api/v1/examples/nothing-here/use-plan",
                     "/api/v1/submissions/99999", "/api/v1/nowhere"):
            with self.subTest(path=path):
                r = self.client.get(path)
                self.assertEqual(r.status_code, 404)
                self.assertTrue(self.json(r)["error"])
