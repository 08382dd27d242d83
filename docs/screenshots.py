"""Screenshots of the dashboard for the README, from a throwaway deployment: `python -m docs.screenshots`.

Needs Debian's Chromium (apt-get install chromium) and Playwright (the test extra). Writes docs/img/*.png.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

from bench.common import REPO
from bench.service import running_service

OUT = REPO / "docs" / "img"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, running_service(Path(tmp), workers=1) as (base, _store, _processes):
        client = httpx.Client(base_url=base, timeout=60)
        for name in ("mnist-cnn.json", "quickstart-mlp-fashion.json", "diabetes-linear-regression.json"):
            client.post("/experiments", json=json.loads((REPO / "examples" / name).read_text())).raise_for_status()
        sweep = {"name": "lr x batch size on digits", "grid": {"optimizer.lr": [0.0003, 0.003, 0.03],
                 "batch_size": [32, 128]}, "base": {"dataset": {"name": "digits"}, "model": {"kind": "mlp",
                 "hidden": [64]}, "epochs": 8}}  # fmt: skip
        client.post("/sweeps", json=sweep).raise_for_status()
        notes = {"tags": ["baseline", "cnn"], "notes": "The first CNN: the baseline the later runs are compared with."}
        client.patch("/experiments/1", json=notes).raise_for_status()
        client.patch("/experiments/3", json={"tags": ["regression"]}).raise_for_status()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(300_000)
            expect.set_options(timeout=300_000)  # its own default, 5 s, is less than a run takes
            page.goto(f"{base}/#/experiments/1")
            expect(page.locator(".exp-header .badge")).to_have_text("succeeded")
            page.set_input_files("#predict-file", str(REPO / "examples" / "images" / "mnist-val-7.png"))
            expect(page.locator("#prediction .predicted")).to_have_text("7")
            expect(page.locator("#confusion")).to_be_visible()
            page.wait_for_function("document.getElementById('weights')?.naturalWidth > 0")
            page.click("#show-layers")
            page.wait_for_function("document.getElementById('activations')?.naturalHeight > 0")
            page.locator("#activations").screenshot(path=str(OUT / "activations.png"))
            draw_a_seven(page)
            expect(page.locator("#prediction .predicted")).to_have_text("7")
            page.wait_for_function("document.getElementById('sketch-sent')?.naturalWidth > 0")
            page.screenshot(path=str(OUT / "experiment.png"), full_page=True)
            while client.get("/experiments/3").json()["status"] != "succeeded":
                time.sleep(0.5)
            page.goto(f"{base}/#/")
            expect(page.locator('#experiments tr[data-id="3"] [data-status]')).to_have_text("succeeded")
            page.screenshot(path=str(OUT / "experiments.png"))
            page.goto(f"{base}/#/submit")
            page.fill("#spec", (REPO / "examples" / "cnn-pool-then-relu.json").read_text())
            page.click("#validate")
            expect(page.locator("#layers")).to_be_visible()
            page.screenshot(path=str(OUT / "submit.png"), full_page=True)
            page.goto(f"{base}/#/sweeps/1")
            expect(page.locator("#trials [data-status=succeeded]")).to_have_count(6)
            expect(page.locator("#delete-sweep")).to_be_visible()  # drawn with the final ranking
            page.screenshot(path=str(OUT / "sweep.png"), full_page=True)
            browser.close()
    print(f"wrote {', '.join(p.name for p in sorted(OUT.glob('*.png')))} in {OUT}")


def draw_a_seven(page: Page) -> None:
    """A 7 in one stroke on the experiment page's sketch pad: across the top, then down to the left."""
    pad = page.locator("#sketch")
    pad.scroll_into_view_if_needed()
    box = pad.bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + 0.25 * w, y + 0.2 * h)
    page.mouse.down()
    page.mouse.move(x + 0.75 * w, y + 0.2 * h, steps=8)
    page.mouse.move(x + 0.45 * w, y + 0.85 * h, steps=12)
    page.mouse.up()


if __name__ == "__main__":
    main()
