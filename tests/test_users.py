"""People: the one get-or-create of a user, and a hub user's review rights."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from gallery import services

from .base import GalleryTestCase


class EnsureUserTests(GalleryTestCase):
    def test_it_makes_a_user_once_without_a_usable_password(self) -> None:
        user = services.ensure_user("nadia", email="nadia@example.org")
        self.assertFalse(user.has_usable_password())
        self.assertEqual(user.email, "nadia@example.org")
        self.assertEqual(services.ensure_user("nadia").pk, user.pk)

    def test_it_refuses_a_name_longer_than_the_user_table_keeps(self) -> None:
        self.assertEqual(services.ensure_user("n" * 150).get_username(), "n" * 150)
        with self.assertRaisesMessage(services.NotAllowed, "longer than the 150 characters"):
            services.ensure_user("n" * 151)
        self.assertFalse(get_user_model().objects.filter(username="n" * 151).exists())


    def test_it_keeps_no_address_of_a_git_author_too_long_for_the_user_table(self) -> None:
        from gallery.repo import Person

        address = "a" * 250 + "@example.org"
        user = services.user_for_person(Person(name="Long", email=address))
        self.assertEqual((user.get_username(), user.email), (address[:150], ""))
        short = services.user_for_person(Person(name="Ann", email="ann@example.org"))
        self.assertEqual(short.email, "ann@example.org")


class SyncUserTests(GalleryTestCase):
    def model(self, name: str, scopes: list[str] = (), groups: list[str] = ()) -> dict:  # type: ignore[assignment]
        return {"name": name, "kind": "user", "groups": list(groups),
                "scopes": ["access:services!service=gallery", *scopes]}

    def test_it_makes_holders_of_the_review_scope_reviewers(self) -> None:
        user = services.sync_hub_user(self.model("hanna", scopes=["custom:gallery:review"]))
        self.assertTrue(user.is_staff)
        self.assertTrue(services.is_reviewer(user))
        self.assertFalse(user.has_usable_password())

    def test_it_falls_back_to_the_review_group(self) -> None:
        user = services.sync_hub_user(self.model("gus", groups=["gallery-reviewers"]))
        self.assertTrue(services.is_reviewer(user))

    def test_it_takes_review_rights_away_when_the_hub_does(self) -> None:
        services.sync_hub_user(self.model("hanna", scopes=["custom:gallery:review"]))
        user = services.sync_hub_user(self.model("hanna"))
        self.assertFalse(user.is_staff)
        self.assertFalse(services.is_reviewer(user))

    def test_it_leaves_a_local_superuser_alone(self) -> None:
        get_user_model().objects.create_superuser("root-admin", password="x" * 12)
        user = services.sync_hub_user(self.model("root-admin"))
        self.assertTrue(user.is_staff)

    def test_it_makes_an_ordinary_user_of_anyone_else(self) -> None:
        user = services.sync_hub_user(self.model("olaf"))
        self.assertFalse(user.is_staff)
        self.assertFalse(services.is_reviewer(user))
