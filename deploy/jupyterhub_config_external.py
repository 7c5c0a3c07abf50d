# The gallery as an EXTERNAL JupyterHub service (production): add this to the hub's own
# jupyterhub_config.py. The hub does not start the gallery; gunicorn and the Celery workers run
# under systemd, docker compose or Kubernetes (see deploy/), with the environment below.
#
# One secret, the service token, is shared by the hub (here), the gallery's web processes and
# its workers. Make it once, e.g. `openssl rand -hex 32 > /etc/jupyterhub/gallery-token`,
# readable by the hub and by the gallery's user only.
#
# The gallery's web and worker processes then need (JUPYTERHUB_API_TOKEN_FILE works too):
#   JUPYTERHUB_API_URL=http://<hub's internal address>:8081/hub/api
#   JUPYTERHUB_API_TOKEN=<the token>
#   JUPYTERHUB_CLIENT_ID=service-gallery
#   JUPYTERHUB_SERVICE_PREFIX=/services/gallery/
#   JUPYTERHUB_OAUTH_CALLBACK_URL=/services/gallery/oauth_callback
#   JUPYTERHUB_OAUTH_ACCESS_SCOPES='["access:services", "access:services!service=gallery"]'
#   JUPYTERHUB_BASE_URL=/                 (the hub's base_url)
#   GALLERY_HUB_URL=http://<proxy's address>   where the workers reach user servers
#   GALLERY_USE_BACKEND=contents          (or filesystem, on a shared home filesystem)
#   GALLERY_ALLOWED_HOSTS=hub.example.org and, behind TLS, GALLERY_BEHIND_TLS_PROXY=1,
#   GALLERY_SECURE_COOKIES=1, GALLERY_CSRF_TRUSTED_ORIGINS=https://hub.example.org
# and gunicorn runs with SCRIPT_NAME=/services/gallery (no trailing slash).
import os
from pathlib import Path

c = get_config()  # noqa: F821

GALLERY_TOKEN = Path(os.environ.get("GALLERY_TOKEN_FILE", "/etc/jupyterhub/gallery-token")
                     ).read_text().strip()
REVIEW_SCOPE = "custom:gallery:review"  # GALLERY_REVIEW_SCOPE of the gallery
REVIEW_GROUP = "gallery-reviewers"  # GALLERY_REVIEW_GROUP of the gallery (a fallback)

c.JupyterHub.services.append(
    {
        "name": "gallery",
        "url": "http://gallery.internal:8010",  # where the proxy finds gunicorn
        "api_token": GALLERY_TOKEN,  # also the gallery's OAuth client secret
        "oauth_no_confirm": True,  # a service run by the centre: no consent page
        # A user's token issued to the gallery carries their identity and, for reviewers,
        # the review scope; nothing else.
        "oauth_client_allowed_scopes": [REVIEW_SCOPE],
        "display": True,  # listed in the Services menu for users with access
    }
)

c.JupyterHub.custom_scopes.update({
    REVIEW_SCOPE: {"description": "Approve or reject examples in the examples gallery"},
})

c.JupyterHub.load_roles.extend([
    {
        # Reviewers: members of this hub group (or of an IdP-managed group) hold the scope.
        "name": "gallery-reviewer",
        "scopes": [REVIEW_SCOPE],
        "groups": [REVIEW_GROUP],
    },
    {
        # The gallery's own token. Only the contents backend needs these; with the filesystem
        # backend give the role no scopes at all.
        "name": "gallery-service",
        "services": ["gallery"],
        "scopes": [
            "read:servers",  # whether a user's server runs, and its URL
            "start:servers",  # start it for a Use (never stop or delete it)
            "access:servers",  # write through its contents API
            # Narrower on a big hub: "access:servers!group=gallery-users" and the same filter
            # on the other two, so the gallery can reach only the servers of its users.
        ],
    },
])

# Who may open the gallery: everyone (JupyterHub 6+) ...
c.JupyterHub.extra_user_scopes = {"access:services!service=gallery"}
# ... or only a group: drop the line above and add
#   {"name": "gallery-user", "scopes": ["access:services!service=gallery"],
#    "groups": ["gallery-users"]}
# to load_roles.

# The "Submit to gallery" button (labextension/, `pip install ./labextension` into the
# single-user image): each user's server sends notebooks with its own $JUPYTERHUB_API_TOKEN,
# which therefore needs access to the gallery on top of the default 'server' role's scopes,
# and it must know a URL of the gallery it can reach (the proxy's internal address will do).
c.Spawner.server_token_scopes = [
    "users:activity!user", "access:servers!server", "access:services!service=gallery"]
c.Spawner.environment.update({"GALLERY_URL": "http://proxy-public/services/gallery/"})
