"""The dispatcher web app at /app/ and the operator console at /admin/: static files built by Vite
from webapp/ (`make js`, two pages of one build sharing /app/assets/) into
api/app_static/, shipped in the wheel as package data and read through importlib.resources, so an
installed server serves it with no source tree and no CDN.

GET /app/                 index.html, with the app's settings (map tiles, stale/offline minutes)
                          put into its `app-config` JSON block; never cached (Cache-Control: no-cache)
GET /admin/               admin.html, the operator console (no settings; never cached)
GET /app/assets/{name}    the bundle's files (both pages'); their names carry a content hash, so they are cached
                          for a year (immutable); 404 for anything not in the build

Every answer carries a Content-Security-Policy: scripts, styles, fonts and connections only from
this origin, images also from the configured tile server.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import mimetypes
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from quart import Blueprint, Response

from api.current import runtime

from .errors import ApiError
from .openapi import operation

blueprint = Blueprint("webapp", __name__)
TAGS = ["app"]
PACKAGE_DIR = "app_static"  # inside the `api` package
CONFIG_MARKER = "__APP_CONFIG__"
ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
HTML = {"text/html": {"schema": {"type": "string"}}}
ANY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
EXTRA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def build_dir():
    """The built app inside the installed package (a Traversable; may not exist before `make js`)."""
    return importlib.resources.files("api") / PACKAGE_DIR


@functools.cache
def _assets() -> dict[str, Asset]:
    """Every file of the build, read once per process (a few hundred KB)."""
    root = build_dir() / "assets"
    found: dict[str, Asset] = {}
    if not root.is_dir():
        return found
    for entry in root.iterdir():
        if entry.is_file() and ASSET_NAME.match(entry.name):
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            kind = EXTRA_TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind == "image/svg+xml":
                kind += "; charset=utf-8"
            body = entry.read_bytes()
            found[entry.name] = Asset(body, kind, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return found


@functools.cache
def _page(name: str) -> str | None:
    """One of the build's HTML pages (index.html: the dispatcher app; admin.html: the console)."""
    page = build_dir() / name
    return page.read_text("utf-8") if page.is_file() else None


def _config() -> dict:
    s = runtime().settings
    tiles = "" if s.map_tile_url.strip().lower() in ("none", "off") else s.map_tile_url
    return {
        "tileUrl": tiles,
        "attribution": s.map_attribution,
        "staleMinutes": s.vehicle_stale_minutes,
        "offlineMinutes": s.vehicle_offline_minutes,
        "syncTokenSeconds": s.app_sync_token_ttl,
    }


def _tile_origin(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.netloc:
        host = parts.netloc.replace("{s}", "*")  # Leaflet's subdomain placeholder
        return f"{parts.scheme}://{host}"
    return ""


def _security_headers(tile_url: str) -> dict[str, str]:
    img = " ".join(filter(None, ("'self' data: blob:", _tile_origin(tile_url))))
    return {
        "Content-Security-Policy": (
            f"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src {img}; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }


def _embed(config: dict) -> str:
    """JSON safe inside a <script> element (no `</script>`, no HTML comment openers)."""
    return json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass(frozen=True)
class Entry:
    """A page of the build served at /{name}/: `settings` says whether the app's settings go into
    its `app-config` block."""

    page: str
    summary: str
    settings: bool


ENTRIES = {
    "app": Entry("index.html", "The dispatcher web app (HTML; its settings embedded)", settings=True),
    # the console's page is public (it holds no data); everything it shows comes from operator
    # routes, which refuse any credential but an operator's session (api.operator_sessions)
    "admin": Entry(
        "admin.html",
        "The operator console (HTML): sign-in, customers, API keys, deployments and migrations, nodes",
        settings=False,
    ),
}


def _entry_handler(entry: Entry):
    async def page():
        html = _page(entry.page)
        if html is None:
            raise ApiError(404, "app_not_built", "the web app is not built into this installation (run `make js`)")
        tile_url = ""
        if entry.settings:
            config = _config()
            html, tile_url = html.replace(CONFIG_MARKER, _embed(config)), config["tileUrl"]
        headers = {"Cache-Control": "no-cache", **_security_headers(tile_url)}
        return Response(html, status=200, mimetype="text/html", headers=headers)

    return page


for _name, _entry in ENTRIES.items():
    blueprint.add_url_rule(
        f"/{_name}/",
        endpoint=_name,
        view_func=operation(_entry.summary, tags=TAGS, content=HTML, errors=(404,))(_entry_handler(_entry)),
        methods=["GET"],
    )


@blueprint.get("/app/assets/<name>")
@operation("A file of the web app's bundle (content-hashed name, cached for a year)", tags=TAGS, content=ANY)
async def asset(name: str):
    found = _assets().get(name) if ASSET_NAME.match(name) else None
    if found is None:
        raise ApiError(404, "not_found", "no such file in the web app")
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable",
        "ETag": found.etag,
        **_security_headers(_config()["tileUrl"]),
    }
    return Response(found.body, status=200, content_type=found.content_type, headers=headers)
