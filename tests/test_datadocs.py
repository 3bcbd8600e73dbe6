"""great-expectations Data Docs render with no network (stepcode/data/datadocs.py): every page of a site written by a
real validation loads its CSS and JavaScript from files inside the site, and those files exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stepcode.config import Params
from stepcode.data.datadocs import (
    ASSETS,
    CHART_SCRIPTS,
    VENDORED,
    latest_validation,
    offline_html,
    remote_assets,
    site_files,
    standalone,
)
from stepcode.data.traces import trace_rows
from stepcode.data.validation import validate_traces
from stepcode.jsonl import write_jsonl

PAGE = """<head>
<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>
<link rel="shortcut icon" href="../../../static/images/favicon.ico" type="image/x-icon"/>
<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>
<script src="https://cdn.jsdelivr.net/npm/vega-lite@5"></script>
<script src="https://cdn.jsdelivr.net/npm/vega-embed@6"></script>
<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" integrity="sha384-x" crossorigin="anonymous"></script>
<style>.logo { background: url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png') }</style>
</head><body><img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=20261206T1&dataContextId=abc"/>
<a href="https://greatexpectations.io">GX</a> Data asset: None<br></body>"""


def test_offline_html_points_at_the_vendored_copies():
    html = offline_html(PAGE, "../../../../static/", asset="trace_table (traces.jsonl)")
    assert remote_assets(html) == [] and "vega" not in html
    assert '<link rel="stylesheet" href="../../../../static/vendor/bootstrap/bootstrap.min.css"/>' in html
    assert '<script src="../../../../static/vendor/bootstrap/bootstrap.min.js"></script>' in html   # no SRI/CORS
    assert 'href="../../../../static/images/favicon.ico"' in html                 # GX's link, one level short
    assert html.count("../../../../static/images/logo-long.png") == 2 and "amazonaws" not in html
    assert '<a href="https://greatexpectations.io">' in html                      # links stay links
    assert "Data asset: trace_table (traces.jsonl)<br>" in html
    assert offline_html(html, "../../../../static/") == html                      # idempotent


def test_a_page_that_draws_a_chart_keeps_vega():
    page = PAGE + "<script>vegaEmbed('#c', spec);</script>"
    assert len(CHART_SCRIPTS.findall(offline_html(page, "static/"))) == 3


def test_every_vendored_file_exists_and_every_template_url_is_vendored():
    """GX's own page templates name no CSS/JS URL we do not serve (a GX upgrade that changes one fails here)."""
    import great_expectations

    assert all((ASSETS / path).is_file() for path in VENDORED.values())
    templates = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
    urls = {u for t in templates.glob("*.j2") for u in remote_assets(t.read_text(encoding="utf-8"))}
    assert urls, "no CSS/JS URL found in GX's templates: has their layout changed?"
    unserved = {u for u in urls if u not in VENDORED and not CHART_SCRIPTS.search(f'<script src="{u}"></script>')}
    assert not unserved, unserved


def _local_assets(page: Path) -> list[Path]:
    """The CSS and JavaScript files a page loads from disk."""
    html = page.read_text(encoding="utf-8")
    refs = re.findall(r'<link rel="stylesheet"[^>]*href="([^"]+)"', html) + re.findall(r'<script src="([^"]+)"', html)
    return [(page.parent / ref).resolve() for ref in refs]


def test_a_real_validation_writes_data_docs_that_need_no_network(tmp_path):
    rows = [{"id": "p0", "code": "def f(x):\n    y = x + 1\n    return y * 2\n", "input": "3", "entry_point": "f"},
            {"id": "p1", "code": "def f(s):\n    t = s.upper()\n    return t\n", "input": "'ab'", "entry_point": "f"}]
    write_jsonl(tmp_path / "traces.jsonl", trace_rows(rows, Params(), workers=1))
    for _ in range(2):   # a second run adds a page beside the first and rewrites the index
        result = validate_traces(tmp_path / "traces.jsonl", tmp_path / "report", Params())
    site = result.report_path.parent
    pages = sorted(site.rglob("*.html"))
    assert len([p for p in pages if "validations" in p.parts]) == 2
    for page in pages:
        html = page.read_text(encoding="utf-8")
        assert remote_assets(html) == [], page
        assert "amazonaws" not in html, page
        assets = _local_assets(page)
        assert len(assets) >= 10, page
        missing = [a for a in assets if not a.is_file()]
        assert not missing, (page, missing)
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "traces.jsonl" in index           # the run is named after the file it validated, not __none__
    assert (site / "static" / "vendor" / "bootstrap" / "LICENSE").is_file()


@pytest.mark.parametrize("url", sorted(VENDORED))
def test_vendored_paths_are_relative_and_inside_the_assets(url):
    path = Path(VENDORED[url])
    assert not path.is_absolute() and ".." not in path.parts


def test_site_files_and_a_standalone_page(tmp_path):
    """What the validate stage logs to MLflow: the pages and what they load (not GX's unused static files), and the
    newest validation page as one file with everything inlined (the MLflow UI shows it from a blob URL)."""
    rows = [{"id": "p0", "code": "def f(x):\n    y = x + 1\n    return y * 2\n", "input": "3", "entry_point": "f"}]
    write_jsonl(tmp_path / "traces.jsonl", trace_rows(rows, Params(), workers=1))
    result = validate_traces(tmp_path / "traces.jsonl", tmp_path / "report", Params())
    site = result.report_path.parent.resolve()
    files = site_files(site)
    pages = sorted(site.rglob("*.html"))
    assert set(pages) <= set(files)
    for page in pages:                       # everything a page loads is there...
        assert set(_local_assets(page)) <= set(files), page
    css = site / "static" / "vendor" / "fontawesome" / "css" / "all.min.css"
    assert css in files and (css.parent.parent / "webfonts" / "fa-solid-900.woff2") in files   # ... and what its CSS loads
    unused = [f for f in site.rglob("*") if f.is_file() and f not in files]
    assert any(f.suffix == ".gif" for f in unused)                     # GX's megabytes of unused images stay out
    assert sum(f.stat().st_size for f in files) < sum(f.stat().st_size for f in site.rglob("*") if f.is_file()) / 2

    page = latest_validation(site)
    assert page.parent.parent.parent.name == "trace_table" and page.suffix == ".html"
    html = standalone(page)
    assert remote_assets(html) == [] and not re.search(r'<(?:link|script)[^>]*(?:href|src)="\.\./', html)
    assert html.count("<style>") >= 3 and "data:font/woff2;base64," in html and "data:image/png;base64," in html
    assert "<script" not in html and "Expectation Validation Result" in html
    assert html.count("data:font/woff2;base64,") == 1 and "bootstrap-prefers-dark" not in html
    assert len(html.encode()) < 700_000
