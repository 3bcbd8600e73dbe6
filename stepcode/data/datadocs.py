"""great-expectations Data Docs that render offline.

    from stepcode.data.datadocs import make_offline
    make_offline("reports/validation/gx/uncommitted/data_docs/local_site")   # after GX (re)builds the site

GX's pages load Bootstrap, jQuery, bootstrap-table, Font Awesome... from CDNs: offline (our machines, an air-gapped
cluster) they come out unstyled, and the index, a table that bootstrap-table draws from inline data, comes out
empty. `make_offline` copies the vendored files (`datadocs_assets/`, licences and provenance in its README) into the
site's `static/vendor/` and points every page at them (`offline_html`). The vega scripts, which only a chart needs,
are dropped from pages that draw none. Two more things a reader would see broken are mended on the way: the logo,
which GX loads from its web server with the time and the data context's id in the query string (a beacon), comes from
the site's own `static/images/`; and GX's relative links into `static/` (the favicon) are recomputed for the page's
depth (GX writes validation pages one folder deeper than its links assume); and "Data asset: None" (GX names no
asset for a DataFrame batch) names the asset given. Idempotent: a rewritten page stays as it is.

For a tracking server (the validate stage logs the site as artifacts of its run): `site_files` lists the pages and
what they load (CSS, scripts, images, the fonts the CSS loads), leaving out the megabytes of GX's static files no
page uses; `standalone` makes one page (`latest_validation`: this run's) a single static HTML file with its CSS and
images inlined, which renders where a page cannot fetch its neighbours (the MLflow UI's artifact view shows an HTML
artifact from a blob URL, in a sandboxed frame).
"""

from __future__ import annotations

import base64
import html as html_text
import mimetypes
import os
import re
import shutil
from pathlib import Path

ASSETS = Path(__file__).with_name("datadocs_assets")
VENDOR = Path("static") / "vendor"          # inside the site folder

# Every CSS/JS URL of GX 1.24's page templates (great_expectations/render/view/templates) -> its copy in ASSETS.
VENDORED = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/bootstrap.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "bootstrap-dark/bootstrap-prefers-dark.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "fontawesome/css/all.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table/extensions/filter-control/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker/bootstrap-datepicker.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper/popper.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/jquery.min.js",
}
LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.[a-z0-9.-]+/(?:logo-long|full_logo_dark)\.png(?:\?[^\"')\s]*)?")
STATIC_LINK = re.compile(r'(?<=["\'(])(?:\./|(?:\.\./)+)static/')    # GX's relative links into the site's static/
CHART_SCRIPTS = re.compile(r'[ \t]*<script src="https://cdn\.jsdelivr\.net/npm/vega(-lite|-embed)?@\d+"></script>\n?')
# Subresource-integrity and CORS attributes: a browser refuses a file:// script that carries them.
_SRI = re.compile(r'\s+(integrity="[^"]*"|crossorigin="[^"]*")')
_TAG = re.compile(r"<(?:script|link)\b[^>]*>")


def offline_html(html: str, static: str, asset: str | None = None) -> str:
    """Pure: the page with every vendored CDN URL replaced by its copy under the site's static/vendor/ (`static`:
    the relative path from the page to the site's static/, ending in "/"), the integrity/crossorigin attributes of
    those tags removed, the logo and the links into static/ made local and right for this page, and the vega scripts
    removed when the page draws no chart (no `vegaEmbed`); with `asset`, "Data asset: None" names it."""
    def local(tag: re.Match) -> str:
        text = tag.group(0)
        for url, path in VENDORED.items():
            if f'"{url}"' in text:
                return _SRI.sub("", text.replace(f'"{url}"', f'"{static}vendor/{path}"'))
        return text

    html = STATIC_LINK.sub(static, html)
    html = _TAG.sub(local, html)
    html = LOGO.sub(f"{static}images/logo-long.png", html)
    if asset:
        html = html.replace("Data asset: None<br>", f"Data asset: {html_text.escape(asset)}<br>")
    if "vegaEmbed" not in html:
        html = CHART_SCRIPTS.sub("", html)
    return html


def remote_assets(html: str) -> list[str]:
    """Pure: the http(s) URLs a page loads CSS or JavaScript from (`<link rel="stylesheet" href>`, `<script src>`)."""
    urls = []
    for tag in _TAG.findall(html):
        is_css = tag.startswith("<link") and "stylesheet" in tag
        m = re.search(r'\b(?:src|href)="(https?://[^"]+)"', tag)
        if m and (is_css or tag.startswith("<script")):
            urls.append(m.group(1))
    return urls


def make_offline(site_dir, asset: str | None = None) -> list[Path]:
    """Copy the vendored assets into `site_dir`/static/vendor and rewrite every page of the site to use them
    (`asset`: what a validation page's "Data asset: None" should say). Returns the pages rewritten."""
    site = Path(site_dir)
    vendor = site / VENDOR
    shutil.copytree(ASSETS, vendor, dirs_exist_ok=True)   # the licences and README travel with the files
    changed = []
    for page in sorted(site.rglob("*.html")):
        static = Path(os.path.relpath(site / "static", page.parent)).as_posix() + "/"
        html = page.read_text(encoding="utf-8")
        new = offline_html(html, static, asset)
        if new != html:
            page.write_text(new, encoding="utf-8")
            changed.append(page)
    return changed


_LOADING_TAG = re.compile(r"<(?:link|script|img)\b[^>]*>")
_LOCAL_REF = re.compile(r'\b(?:href|src)="([^"#?:]+)"')        # a relative URL: no scheme, query or fragment
_CSS_REF = re.compile(r"""url\(\s*['"]?([^'")?#:]+)[^'")]*['"]?\s*\)""")


def site_files(site_dir) -> list[Path]:
    """Every page of the site and every local file its pages load, directly or through their CSS (`url(...)`), in
    path order: what a reader of the site needs, without the GX static files that nothing uses."""
    site = Path(site_dir).resolve()
    pages = sorted(site.rglob("*.html"))
    needed, todo = set(pages), []
    for page in pages:
        for tag in _LOADING_TAG.findall(page.read_text(encoding="utf-8")):
            todo += [(page.parent / ref).resolve() for ref in _LOCAL_REF.findall(tag)]
    while todo:
        f = todo.pop()
        if f in needed or not f.is_file() or site not in f.parents:
            continue
        needed.add(f)
        if f.suffix == ".css":
            todo += [(f.parent / ref).resolve() for ref in _CSS_REF.findall(f.read_text(encoding="utf-8"))]
    return sorted(needed)


def latest_validation(site_dir) -> Path | None:
    """The newest validation page of the site (GX names each run's folder by its UTC time, which sorts), or None."""
    pages = sorted(Path(site_dir).glob("validations/**/*.html"), key=lambda p: (p.parent.name, p.name))
    return pages[-1] if pages else None


# What a standalone page leaves out, to stay small (the MLflow UI loads an HTML artifact whole, into a sandboxed
# frame): the dark-mode variant and the index page's date and filter controls; and of the fonts, only Font Awesome's
# solid set (the pages' status icons, `fas fa-check-circle`...) is inlined.
STANDALONE_SKIP = ("bootstrap-dark/", "bootstrap-datepicker/", "bootstrap-table/extensions/filter-control/")
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>\s*", re.S)
STANDALONE_FONTS = ("fa-solid-900.woff2",)


def _data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or ("font/woff2" if path.suffix == ".woff2" else
                                                  "application/octet-stream")
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def standalone(page) -> str:
    """One page of an offline site (`make_offline`) as a single static HTML file: its stylesheets inlined (but
    `STANDALONE_SKIP`'s), its images and `STANDALONE_FONTS` as data: URIs, its scripts left out (about 0.5 MB). Every
    result shows as the page lays it out; what the scripts add (the "failed only" filter, table search, "show more
    info") is in the site itself. Links to other pages stay as they are (they work in the site only)."""
    page = Path(page)
    html = _SCRIPT.sub("", page.read_text(encoding="utf-8"))

    inlined: set[str] = set()

    def css(path: Path) -> str:
        def font(m: re.Match) -> str:   # once: Font Awesome declares its solid set again for its v4 and v5 names
            target = path.parent / m.group(1)
            if target.name not in STANDALONE_FONTS or target.name in inlined or not target.is_file():
                return m.group(0)
            inlined.add(target.name)
            return f"url({_data_uri(target)})"

        return _CSS_REF.sub(font, path.read_text(encoding="utf-8"))

    def inline(tag: re.Match) -> str:
        text = tag.group(0)
        ref = _LOCAL_REF.search(text)
        target = page.parent / ref.group(1) if ref else None
        if target is None or not target.is_file():
            return text
        ref = ref.group(1)
        if text.startswith("<link") and "stylesheet" in text:
            return "" if any(f"vendor/{skip}" in ref for skip in STANDALONE_SKIP) else \
                f"<style>/* {ref} */\n{css(target)}\n</style>"
        return text.replace(f'"{ref}"', f'"{_data_uri(target)}"')   # an image, the favicon

    return _LOADING_TAG.sub(inline, html)
