"""Who may do what: the visibility of examples through the API, and the authorisation matrix
of every URL of the gallery."""

from __future__ import annotations

import json

from gallery import services
from gallery.models import Job

from .base import GalleryTestCase, notebook_bytes, stage


class ApiVisibilityTests(GalleryTestCase):
    """The API finds an example only for those who may see it, as the pages do."""

    def setUp(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            self.refused = stage(self.contributor, title="Refused walrus")
        services.reject_submission(submission=self.refused, reviewer=self.reviewer,
                                   comment="Walrus is out of scope.")
        self.slug = self.refused.example.slug
        self.client.force_login(self.user)

    def test_it_answers_404_for_a_rejected_example_in_every_call(self) -> None:
        for method, path in (("get", ""), ("get", "/use-plan"), ("post", "/use")):
            response = getattr(self.client, method)(f"/api/v1/examples/{self.slug}{path}",
                                                    content_type="application/json")
            self.assertEqual(response.status_code, 404, path)
            self.assertEqual(response.json(), {"error": "There is no such example."}, path)
        self.assertFalse(Job.objects.filter(kind=Job.Kind.USE).exists())

    def test_it_refuses_a_revision_of_an_example_the_caller_does_not_see_as_absent(self) -> None:
        response = self.client.post("/api/v1/submissions", content_type="application/json",
                                    data=json.dumps({"title": "Mine now", "example": self.slug,
                                                     "notebook": notebook_bytes().decode()}))
        self.assertEqual(response.status_code, 404)
        self.assertNotIn("connor", response.content.decode())  # nor who owns it

    def test_it_still_answers_the_contributor(self) -> None:
        self.client.force_login(self.contributor)
        response = self.client.get(f"/api/v1/examples/{self.slug}")
        self.assertEqual(response.json()["state"], "rejected")
        self.assertEqual(self.client.get(f"/api/v1/examples/{self.slug}/use-plan").status_code,
                         409)
