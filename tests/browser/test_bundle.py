"""The built client: the JavaScript a first visit loads stays under 250 KiB gzipped, and
index.html has no inline script or style (the CSP allows this origin's files only)."""

from __future__ import annotations

import gzip
import re

from tests.browser.conftest import ROOT

DIST = ROOT / "web" / "dist"
LIMIT = 250 * 1024


def test_initial_javascript_under_250_kib_gzipped(browser_ready: None) -> None:
    html = (DIST / "index.html").read_text()
    scripts = re.findall(r'<script[^>]*\bsrc="/([^"]+\.js)"', html)
    preloads = re.findall(r'<link[^>]*rel="modulepreload"[^>]*href="/([^"]+)"', html)
    assert scripts, html
    total = sum(len(gzip.compress((DIST / p).read_bytes(), 9)) for p in scripts + preloads)
    print(f"\ninitial JS: {total / 1024:.1f} KiB gzipped ({len(scripts + preloads)} files)")
    assert total < LIMIT
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # no inline script
    assert "<style" not in html and "style=" not in html
    assert "http://" not in html and "https://" not in html  # no CDN, no external fonts
