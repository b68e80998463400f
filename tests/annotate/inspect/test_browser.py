"""The page in a real browser: headless Chromium renders the heatmap spans (DOM and screenshot pixels)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from remit.annotate.inspect import show
from tests.annotate.inspect.conftest import EVIL_DOC_ID, EVIL_TEXT
from tests.annotate.inspect.pagetools import parse_page

pytest.importorskip("duckdb")
pytest.importorskip("matplotlib")

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y chromium)"
)

# Flags for a closed network and a machine without a display or a session bus.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180, check=True
    )


@pytest.fixture(scope="module")
def page(tmp_path_factory, text_output: Path) -> Path:
    out = tmp_path_factory.mktemp("browser") / "page.html"
    p = argparse.ArgumentParser()
    show.add_arguments(p)
    args = p.parse_args(
        [str(text_output), "-o", str(out), "--doc", EVIL_DOC_ID, "--doc", "plain-1", "--plot-tokens", "2000"]
    )
    assert show.run(args) == 0
    return out


def test_dom_has_every_heatmap_span_and_no_script(tmp_path: Path, page: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    rendered, source = parse_page(dom), parse_page(page.read_text(encoding="utf-8"))
    assert len(rendered.spans) == len(source.spans) > 50
    assert [s.style for s in rendered.spans] == [s.style for s in source.spans]
    assert "script" not in rendered.tags
    assert EVIL_TEXT.replace("\n", "\u21b5\n") in "".join(rendered.segment_texts)


def test_screenshot_shows_coloured_tokens(tmp_path: Path, page: Path) -> None:
    import matplotlib.image as mpimg

    shot = tmp_path / "page.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    pixels = np.round(mpimg.imread(shot)[..., :3] * 255).astype(int)

    def count(rgb: tuple[int, int, int]) -> int:
        return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= 2).sum())

    # Tokens at the clip bounds are painted in exactly BLUE or RED, and there are many of them. The legend
    # bar reaches those colours only at its two ends (a few dozen pixels), so large counts mean the spans.
    spans = parse_page(page.read_text(encoding="utf-8")).spans
    full = {"blue": f"background:{show.weight_colour(0.8, 0.2)}", "red": f"background:{show.weight_colour(1.2, 0.2)}"}
    assert sum(s.style == full["blue"] for s in spans) > 10 and sum(s.style == full["red"] for s in spans) > 10
    assert count(show.BLUE) > 1500, "blue (down-weighted) token backgrounds are missing from the screenshot"
    assert count(show.RED) > 1500, "red (up-weighted) token backgrounds are missing from the screenshot"
    # Text is drawn over them: dark pixels exist.
    assert int((pixels.max(axis=-1) < 80).sum()) > 1000
    shutil.copy(shot, page.with_name("page.png"))  # kept beside the page for a look by eye
