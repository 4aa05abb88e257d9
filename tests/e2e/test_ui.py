"""What a person sees in the real Prefect UI, in headless Chromium (Debian's chromium, driven by
Playwright): the report artifact shows its plots, which the UI could not load from the report's
relative links. Skipped only where no Chromium is installed (`make setup` installs it when it can)."""

import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)"),
]


def test_the_report_artifact_shows_its_plots_in_the_prefect_ui(prefect_server, tmp_path):
    from playwright.sync_api import sync_playwright
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact

    from flows.artifacts import embed_images
    from pico.plots import make_plots

    train = [
        {"step": s, "loss": 8 - s / 10, "loss_mean": 8 - s / 10, "lr": 1e-3, "grad_norm": 0.5, "grad_norm_max": 0.9}
        for s in range(10, 110, 10)
    ]
    evals = [
        {"step": s, "loss": 8 - s / 12, "token_perplexity": 3000 / (1 + s), "token_perplexity/a": 3000 / (1 + s)}
        for s in (0, 50, 100)
    ]
    plots = make_plots(train, evals, tmp_path / "plots", "ui test run", 2048, 1.0)
    md = "# Training log: ui test run\n\n" + "\n".join(f"![{p}](plots/{p})" for p in plots)

    @flow(name="ui-check")
    def publish() -> str:
        return str(create_markdown_artifact(embed_images(md, tmp_path), key="pico-report", description="ui check"))

    artifact = publish()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1800})
            page.goto(
                f"{prefect_server.api_url.removesuffix('/api')}/artifacts/artifact/{artifact}",
                wait_until="networkidle",
                timeout=90_000,
            )
            deadline = time.time() + 30
            while True:  # the UI renders the markdown after its own API calls
                widths = page.eval_on_selector_all("img[src^='data:image/png']", "els => els.map(e => e.naturalWidth)")
                if len(widths) == len(plots) or time.time() > deadline:
                    break
                time.sleep(0.5)
            shot = tmp_path / "prefect-report-artifact.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert "Training log: ui test run" in page.inner_text("body")
        finally:
            browser.close()
    assert len(widths) == 4 and all(w > 300 for w in widths), widths  # decoded images, not broken icons
    assert Path(shot).stat().st_size > 10_000
