"""Forms of the pages: staging upload, Use, review decision, sending a copy."""

from __future__ import annotations

from typing import Any

from django import forms
from pydantic import ValidationError

from . import schema, services
from .models import Example, HubGroup, audience_choices
from .schema import SubmissionMetaIn


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    widget = MultipleFileInput

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        single = super().clean
        if isinstance(data, (list, tuple)):
            return [single(d, initial) for d in data]
        return [single(data, initial)] if data else []


class StageForm(forms.Form):
    notebook = forms.FileField(help_text="The .ipynb file, saved with its outputs.")
    title = forms.CharField(max_length=schema.TITLE_MAX)
    summary = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                              max_length=schema.SUMMARY_MAX)
    tags = forms.CharField(required=False, max_length=1000, help_text="Comma-separated.")
    licence = forms.CharField(required=False, max_length=schema.LICENCE_MAX, initial="CC-BY-4.0")
    environment = forms.FileField(required=False,
                                  help_text="environment.yml or requirements.txt")
    files = MultipleFileField(required=False, help_text="Small files that travel with it.")
    data_links = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=20000,
        help_text="One per line: name, then a path or URL, e.g. 'era5 /shared/data/era5'.")
    example = forms.SlugField(required=False, widget=forms.HiddenInput)
    groups = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="Audience",
        help_text="Leave all unticked for everyone; tick your hub groups to show it to their "
                  "members only (and have their reviewers review it).")

    def __init__(self, *args: Any, user: Any = None, revising: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = audience_choices(user) if user is not None else []
        if revising or not names:  # a revision keeps its example's groups
            del self.fields["groups"]
        else:
            self.fields["groups"].choices = [(n, n) for n in names]

    @classmethod
    def initial_for(cls, example: Example) -> dict[str, Any]:
        """The form filled in from an example's latest revision, for a new revision of it."""
        revision = example.latest_revision
        meta = revision.metadata if revision else {}
        return {
            "example": example.slug, "title": meta.get("title", example.title),
            "summary": meta.get("summary", example.summary),
            "tags": ", ".join(meta.get("tags", [])), "licence": meta.get("licence", ""),
            "data_links": "\n".join(f"{d.get('name', '')} {d.get('target', '')}"
                                    for d in meta.get("data", [])),
        }

    def clean_data_links(self) -> list[dict[str, str]]:
        links = []
        for number, line in enumerate(self.cleaned_data["data_links"].splitlines(), 1):
            if not line.strip():
                continue
            name, _, target = line.strip().partition(" ")
            if not target.strip():
                raise forms.ValidationError(f"Line {number}: give a name, then a path or URL.")
            links.append({"name": name, "target": target.strip()})
        return links

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        try:
            self._meta = SubmissionMetaIn.model_validate({
                "title": data["title"], "summary": data["summary"], "licence": data["licence"],
                "tags": [t.strip() for t in data["tags"].split(",") if t.strip()],
                "data_links": data["data_links"], "example": data["example"] or "",
                "groups": data.get("groups") or [],
            })
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                field = str(err["loc"][0]) if err["loc"] else None
                self.add_error(field if field in self.fields else None, err["msg"])
        return data

    def meta(self) -> SubmissionMetaIn:
        return self._meta

    def staged_files(self) -> services.StagedFiles:
        data = self.cleaned_data
        env = data.get("environment")
        return services.StagedFiles(
            notebook_name=data["notebook"].name, notebook=data["notebook"].read(),
            environment=(env.name, env.read()) if env else None,
            files={f.name: f.read() for f in data["files"]},
        )


class UseForm(forms.Form):
    folder = forms.CharField(max_length=128, required=False,
                             help_text="Name of the new folder; it never replaces one.")


class ReviewForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"),
                                          ("request_changes", "Request changes"),
                                          ("reject", "Reject")])
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                              max_length=5000)


class DecisionForm(forms.Form):
    """A reviewer's decision on the reviewer's desk."""

    DONE = {"start": "review started", "approve": "approved; it is being published",
            "request_changes": "changes requested", "reject": "rejected"}
    decision = forms.ChoiceField(choices=[("approve", "Approve"),
                                          ("request_changes", "Request changes"),
                                          ("reject", "Reject"), ("start", "Start the review")],
                                 widget=forms.RadioSelect)
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 70}),
                              required=False, max_length=5000,
                              help_text="Shown to the contributor; required to request changes "
                                        "or reject.")

    def done_message(self) -> str:
        return self.DONE[self.cleaned_data["decision"]]


class RetireForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 70}),
                             max_length=2000,
                             help_text="Shown to the contributor and to people with a copy.")


class ImportForm(forms.Form):
    source = forms.CharField(
        max_length=1000, label="Folder or git repository",
        help_text="An absolute folder path under GALLERY_IMPORT_ROOTS, or a git URL "
                  "(https://, ssh:// or git@).")
    ref = forms.CharField(max_length=200, required=False, label="Branch or tag",
                          help_text="For a git repository; empty for its default branch.")


class SendForm(forms.Form):
    """Send a copy of a notebook (and the files that go with it) to people or groups."""

    notebook = forms.FileField(help_text="The .ipynb file, as it is now: recipients get "
                                         "exactly this.")
    files = MultipleFileField(required=False, label="Files that go with it",
                              help_text="Data, helper modules, images: small files.")
    to = forms.CharField(required=False, max_length=5000, label="To people",
                         help_text="Hub user names, separated by commas.")
    groups = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="To groups of yours",
        help_text="Every other member of a group you tick gets it.")
    message = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False,
                              max_length=2000, help_text="Shown to the recipients.")
    name = forms.CharField(required=False, max_length=100, label="Folder name",
                           help_text="The folder recipients get in their home (each may "
                                     "choose another); the notebook's name by default.")

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = sorted(HubGroup.objects.filter(members=user).values_list("name", flat=True)) \
            if user is not None and user.is_authenticated else []
        if names:
            self.fields["groups"].choices = [(n, n) for n in names]
        else:
            del self.fields["groups"]

    def arguments(self) -> dict[str, Any]:
        """The arguments of `services.send_copy`."""
        data = self.cleaned_data
        return {
            "staged": services.StagedFiles(
                notebook_name=data["notebook"].name, notebook=data["notebook"].read(),
                files={f.name: f.read() for f in data["files"]}),
            "to": [n.strip() for n in data["to"].split(",") if n.strip()],
            "groups": data.get("groups") or [], "message": data["message"],
            "name": data["name"],
        }
