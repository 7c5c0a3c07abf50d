"""Logging in through the hub, hub tokens on the API and the session's recheck, without a hub
(or against a fake one).

What needs a real JupyterHub (the whole OAuth flow, hub logout, spawning) is in
tests/e2e/test_hub.py.
"""

from __future__ import annotations

import json
import time
from unittest import mock
from urllib.parse import parse_qs, urlsplit

from django.contrib.auth import get_user_model
from django.test import override_settings
from django.urls import set_script_prefix

from gallery import hub, login

from .base import GalleryTestCase
from .test_hub import ACCESS, GOOD_TOKEN, HTML, NOT_A_TOKEN, NOT_A_USER, FakeHub

PREFIX = "/services/gallery"
# A hub that does not answer: a port nobody listens on.
NO_HUB = {"HUB_ENABLED": True, "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",
          "JUPYTERHUB_API_TOKEN": "service-secret", "JUPYTERHUB_CLIENT_ID": "service-gallery",
          "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{PREFIX}/oauth_callback",
          "JUPYTERHUB_BASE_URL": "/", "LOGIN_URL": "hub-login"}


class LoginWithoutHubTests(GalleryTestCase):
    def test_it_keeps_djangos_own_login_without_a_hub(self) -> None:
        response = self.client.get("/login/?next=/stage/")
        self.assertEqual(response.status_code, 302)
        self.assertEqual(response["Location"], "/accounts/login/?next=%2Fstage%2F")
        response = self.client.post("/accounts/login/", {"username": "ursula",
                                                         "password": "pw-" + "x" * 10})
        self.assertEqual(response.status_code, 302)
        self.assertEqual(self.client.get("/").status_code, 200)

    def test_it_refuses_the_admin_to_a_normal_user_with_403(self) -> None:
        self.client.force_login(self.user)
        for path in ("/admin/", "/admin/login/?next=/admin/", "/admin/gallery/submission/"):
            response = self.client.get(path)
            self.assertEqual(response.status_code, 403, path)
            self.assertContains(response, "for reviewers", status_code=403)

    def test_it_lets_a_reviewer_into_the_admin(self) -> None:
        self.client.force_login(self.reviewer)
        self.assertEqual(self.client.get("/admin/").status_code, 200)

    def test_it_shows_the_admin_login_form_to_strangers_without_a_hub(self) -> None:
        response = self.client.get("/admin/", follow=True)
        self.assertEqual(response.redirect_chain, [("/admin/login/?next=/admin/", 302)])
        self.assertContains(response, 'name="password"')

    def test_it_accepts_no_hub_token_without_a_hub(self) -> None:
        response = self.client.get("/api/v1/examples", HTTP_AUTHORIZATION="token abc")
        self.assertEqual(response.status_code, 401)


class HubRequests(GalleryTestCase):
    """Requests as they come through the hub's proxy, and the start of a login."""

    def get(self, path: str, **extra: str):  # type: ignore[no-untyped-def]
        # As gunicorn passes it: the prefix in SCRIPT_NAME, the rest in PATH_INFO. The test
        # client, unlike Django's WSGI handler, does not set the script prefix itself.
        set_script_prefix(PREFIX + "/")
        try:
            return self.client.get(path, SCRIPT_NAME=PREFIX, **extra)
        finally:
            set_script_prefix("/")

    def start_login(self, next_url: str = f"{PREFIX}/stage/") -> dict[str, list[str]]:
        response = self.get("/login/", data={"next": next_url})
        self.assertEqual(response.status_code, 302)
        location = urlsplit(response["Location"])
        self.assertEqual(location.path, "/hub/api/oauth2/authorize")
        return parse_qs(location.query)


@override_settings(**NO_HUB)
class LoginTests(HubRequests):
    def test_it_sends_strangers_to_the_hub_login(self) -> None:
        response = self.get("/stage/")
        self.assertEqual(response["Location"], f"{PREFIX}/login/?next={PREFIX}/stage/")

    def test_it_asks_the_hub_with_state_and_pkce_kept_in_the_session(self) -> None:
        query = self.start_login()
        pending = self.client.session[hub.PENDING]
        self.assertEqual(query["client_id"], ["service-gallery"])
        self.assertEqual(query["redirect_uri"], [f"{PREFIX}/oauth_callback"])  # byte for byte
        self.assertEqual(query["response_type"], ["code"])
        self.assertEqual(query["state"], [pending["state"]])
        self.assertEqual(query["code_challenge_method"], ["S256"])
        self.assertEqual(query["code_challenge"], [hub.pkce_challenge(pending["verifier"])])
        self.assertNotIn(pending["verifier"], json.dumps(query))
        self.assertEqual(pending["next"], f"{PREFIX}/stage/")

    def test_it_never_sends_people_to_another_site_after_login(self) -> None:
        for wanted in ("https://evil.example/", "//evil.example/x", "/hub/admin"):
            self.start_login(wanted)
            self.assertEqual(self.client.session[hub.PENDING]["next"], f"{PREFIX}/", wanted)

    def test_it_refuses_a_forged_state(self) -> None:
        self.start_login()
        response = self.get("/oauth_callback", data={"code": "c0de", "state": "forged"})
        self.assertEqual(response.status_code, 403)
        self.assertNotIn("_auth_user_id", self.client.session)
        self.assertNotIn(hub.PENDING, self.client.session)  # a state is good for one try

    def test_it_refuses_a_callback_for_a_login_started_elsewhere(self) -> None:
        response = self.get("/oauth_callback", data={"code": "c0de", "state": "whatever"})
        self.assertEqual(response.status_code, 403)
        self.assertContains(response, "did not start here", status_code=403)

    def test_it_refuses_a_login_that_took_too_long(self) -> None:
        state = self.start_login()["state"][0]
        session = self.client.session
        session[hub.PENDING] = {**session[hub.PENDING], "started": time.time() - 3600}
        session.save()
        response = self.get("/oauth_callback", data={"code": "c0de", "state": state})
        self.assertContains(response, "took too long", status_code=403)

    def test_it_says_so_when_the_hub_does_not_answer_and_logs_no_code(self) -> None:
        state = self.start_login()["state"][0]
        with self.assertLogs("gallery.login", "WARNING") as logs:
            response = self.get("/oauth_callback", data={"code": "c0de-s3cret", "state": state})
        self.assertEqual(response.status_code, 503)
        self.assertNotIn("c0de-s3cret", "\n".join(logs.output) + response.content.decode())
        self.assertNotIn("_auth_user_id", self.client.session)

    def test_it_keeps_a_session_while_the_hub_is_down_and_asks_again_later(self) -> None:
        self.client.force_login(self.user)
        session = self.client.session
        session[login.TOKEN], session[login.CHECKED] = "hub-token", 0.0
        session.save()
        response = self.get("/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(self.client.session[login.CHECKED], 0.0)  # not confirmed: ask next time

    def test_it_answers_503_when_the_session_it_must_end_cannot_leave_the_cache(self) -> None:
        from .test_caching import cache_away

        self.client.force_login(self.user)
        session = self.client.session
        session[login.TOKEN], session[login.CHECKED] = "hub-token", 0.0
        session.save()
        with mock.patch.object(hub, "fetch_user", return_value=None), cache_away, \
                self.assertLogs("gallery", "WARNING"):
            response = self.get("/")
        self.assertContains(response, "try again", status_code=503)
        with mock.patch.object(hub, "fetch_user", return_value=None):
            self.assertEqual(self.get("/").status_code, 302)  # once it can, the session ends

    def test_it_sends_a_logged_in_non_reviewer_asking_for_the_admin_a_403_not_a_loop(self) -> None:
        self.client.force_login(self.user)
        for path in ("/admin/", "/admin/login/?next=/services/gallery/admin/"):
            self.assertEqual(self.get(path).status_code, 403, path)
        response = self.get("/login/", data={"next": f"{PREFIX}/admin/"})
        self.assertEqual(response.status_code, 403)

    def test_it_sends_the_admin_login_to_the_hub(self) -> None:
        response = self.get("/admin/login/", data={"next": f"{PREFIX}/admin/"})
        self.assertTrue(response["Location"].startswith("/hub/api/oauth2/authorize?"))
        self.assertEqual(self.client.session[hub.PENDING]["next"], f"{PREFIX}/admin/")

    def test_it_logs_out_of_the_gallery_and_then_of_the_hub(self) -> None:
        self.client.force_login(self.user)
        response = self.client.post("/logout/")
        self.assertEqual(response["Location"], "/hub/logout")
        self.assertNotIn("_auth_user_id", self.client.session)

    def test_it_answers_503_to_api_tokens_when_the_hub_does_not_answer(self) -> None:
        # A token the hub cannot check is not a bad token: the client is told to try again.
        with self.assertLogs("gallery.api", "WARNING"):
            response = self.get("/api/v1/examples", HTTP_AUTHORIZATION="token abc")
        self.assertEqual(response.status_code, 503)
        self.assertIn("hub is not answering", response.json()["error"])
        self.assertTrue(int(response["Retry-After"]) > 0)




@override_settings(**NO_HUB, **ACCESS)
class MisbehavingHubTests(HubRequests):
    """A hub that answers 200 with something no hub says is a hub away, never a 500."""

    def setUp(self) -> None:
        self.hub = self.enterContext(FakeHub(lambda *_: (500, HTML, b"")))
        self.enterContext(override_settings(JUPYTERHUB_API_URL=self.hub.api_url))

    def nonsense(self, user: tuple[str, bytes], token: tuple[str, bytes] = GOOD_TOKEN) -> None:
        """From now on the hub answers the code exchange with `token`, the rest with `user`."""
        def answer(method: str, path: str, _token: str) -> tuple[int, str, bytes]:
            content_type, body = token if path.endswith("/oauth2/token") else user
            return 200, content_type, body

        self.hub.answer = answer

    def test_it_takes_a_token_check_answered_with_nonsense_for_a_hub_away(self) -> None:
        for user in NOT_A_USER:
            with self.subTest(user=user):
                self.nonsense(user)
                with self.assertRaises(hub.HubUnavailable):
                    hub.fetch_user("t0ken")

    def test_it_answers_a_login_the_hub_answers_with_nonsense_with_503(self) -> None:
        cases = [(GOOD_TOKEN, user) for user in NOT_A_USER] + [
            (token, NOT_A_USER[0]) for token in NOT_A_TOKEN]
        for token, user in cases:
            with self.subTest(token=token, user=user):
                self.nonsense(user, token)
                state = self.start_login()["state"][0]
                with self.assertLogs("gallery.login", "WARNING"):
                    response = self.get("/oauth_callback", data={"code": "c0de", "state": state})
                self.assertContains(response, "The hub is not answering", status_code=503)
                self.assertNotIn("_auth_user_id", self.client.session)

    def test_it_answers_503_to_an_api_token_the_hub_answers_with_nonsense(self) -> None:
        for user in NOT_A_USER:
            with self.subTest(user=user):
                self.nonsense(user)
                with self.assertLogs("gallery.api", "WARNING"):
                    response = self.get("/api/v1/examples",
                                        HTTP_AUTHORIZATION=f"token t-{id(user)}")
                self.assertEqual(response.status_code, 503)
                self.assertIn("hub is not answering", response.json()["error"])

    def test_it_keeps_a_session_whose_recheck_the_hub_answers_with_nonsense(self) -> None:
        self.client.force_login(self.user)
        for user in NOT_A_USER:
            with self.subTest(user=user):
                self.nonsense(user)
                session = self.client.session
                session[login.TOKEN], session[login.CHECKED] = "hub-token", 0.0
                session.save()
                self.assertEqual(self.get("/").status_code, 200)
                self.assertEqual(self.client.session[login.CHECKED], 0.0)  # asks again next time


@override_settings(**NO_HUB, **ACCESS)
class LongUserNameTests(HubRequests):
    """A hub user whose name is longer than the user table keeps is refused plainly, never
    with a 500 (PostgreSQL refuses to store such a name)."""

    NAME = "a" * 151

    def setUp(self) -> None:
        user = json.dumps({"name": self.NAME, "kind": "user",
                           "scopes": ["access:services"]}).encode()

        def answer(method: str, path: str, token: str) -> tuple[int, str, bytes]:
            return 200, "application/json", (
                GOOD_TOKEN[1] if path.endswith("/oauth2/token") else user)

        fake = self.enterContext(FakeHub(answer))
        self.enterContext(override_settings(JUPYTERHUB_API_URL=fake.api_url))

    def test_it_refuses_a_login_with_a_name_too_long_with_403(self) -> None:
        state = self.start_login()["state"][0]
        response = self.get("/oauth_callback", data={"code": "c0de", "state": state})
        self.assertContains(response, "longer than the 150 characters", status_code=403)
        self.assertNotIn("_auth_user_id", self.client.session)
        self.assertFalse(get_user_model().objects.filter(username=self.NAME).exists())

    def test_it_refuses_an_api_token_of_a_name_too_long_with_403(self) -> None:
        response = self.get("/api/v1/examples", HTTP_AUTHORIZATION="token t0ken")
        self.assertEqual(response.status_code, 403)
        self.assertIn("longer than the 150 characters", response.json()["error"])
        self.assertFalse(get_user_model().objects.filter(username=self.NAME).exists())
