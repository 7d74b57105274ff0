"""`framepack ui` in a real browser: Chromium from the system packages driven by Playwright (no browser download).

Starts `framepack ui` on 127.0.0.1 and a free port with the tiny golden models, uploads the golden start image,
generates a 2-section video, sees the live preview and then the video element, checks the file on disk, queues
two jobs and cancels one, restarts the app and sees the same queue; saves a screenshot of each tab
(to docs/ with FRAMEPACK_UI_SCREENSHOTS=docs).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import INPUTS, REPO

pytestmark = [pytest.mark.ui, pytest.mark.slow]
CHROMIUM = os.environ.get("FRAMEPACK_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The README's screenshots: FRAMEPACK_UI_SCREENSHOTS=docs refreshes docs/ui-*.png; other runs write them to the
# test's temp folder (a test run leaves the tracked files alone).
DOCS = REPO / "docs" if os.environ.get("FRAMEPACK_UI_SCREENSHOTS") == "docs" else None

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)", allow_module_level=True)
pytest.importorskip("playwright", reason="playwright is not installed (pip install playwright; .ci/run installs it)")
pytest.importorskip("gradio", reason="the ui extra is not installed (pip install -e .[ui])")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.ui.live import serve_cli  # noqa: E402


@pytest.fixture
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def fill_form(page, prompt: str, steps: int = 2) -> None:
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#length-unit label", has_text="sections").click()
    page.locator("#sections input").fill("2")
    page.locator("#steps input[type=number]").fill(str(steps))
    page.locator("#steps input[type=number]").press("Enter")
    res = page.locator("#resolution input")
    res.fill("48x64")
    res.press("Enter")
    page.locator("#seed-mode label", has_text="fixed").click()
    page.locator("#seed input").fill("42")


def submit(page, button: str, job_box: str, before: str) -> str:
    """Click a submit button; the new job's id once the Job box shows one other than `before`."""
    page.locator(button).click()
    box = page.locator(f"{job_box} textarea, {job_box} input").first
    expect(box).not_to_have_value(before, timeout=30_000)
    expect(box).not_to_have_value("", timeout=30_000)
    return box.input_value()


def shot(page, folder: Path, name: str) -> None:
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)


def test_generate_in_the_browser_then_queue_cancel_and_restart(browser, tmp_path):
    save = tmp_path / "out"
    docs = DOCS or tmp_path / "docs"
    with serve_cli(save) as (url, _proc):
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.locator("#start-image input[type=file]").set_input_files(str(INPUTS / "start.png"))
        expect(page.locator("#start-image img")).to_be_visible(timeout=20_000)
        fill_form(page, "A cat walks on the grass.")
        job_id = submit(page, "#generate", "#job-id", "")
        expect(page.locator("#preview img")).to_be_visible(timeout=120_000)
        expect(page.locator("#video video")).to_be_visible(timeout=120_000)
        expect(page.locator("#progress")).to_contain_text(f"Job {job_id}: done", timeout=30_000)
        shot(page, docs, "ui-generate.png")
        mp4s = sorted(save.glob("*.mp4"))
        assert len(mp4s) == 1 and mp4s[0].stat().st_size > 1000 and mp4s[0].read_bytes()[4:8] == b"ftyp"

        # two more jobs; cancel the second while it waits
        fill_form(page, "first of two", steps=100)
        first = submit(page, "#generate", "#job-id", job_id)
        fill_form(page, "second of two")
        second = submit(page, "#generate", "#job-id", first)
        assert len({job_id, first, second}) == 3
        page.get_by_role("tab", name="Queue").click()
        page.locator("#picked textarea, #picked input").first.fill(second)
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator("#queue-status")).to_have_text(f"job {second} cancelled", timeout=30_000)
        expect(page.locator("#outputs video, #outputs img").first).to_be_visible(timeout=30_000)  # the first MP4
        expect(page.locator("#queue-table")).to_contain_text("cancelled", timeout=30_000)
        shot(page, docs, "ui-queue.png")
        page.close()
    # the app stopped (with the first job maybe still running); a new one shows the same queue
    with serve_cli(save) as (url, _proc):
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Queue").click()
        table = page.locator("#queue-table")
        for jid in (job_id, first, second):
            expect(table).to_contain_text(jid, timeout=30_000)
        expect(table).to_contain_text("cancelled")
        page.close()
    for name in ("ui-generate.png", "ui-queue.png"):
        assert (docs / name).read_bytes()[:4] == b"\x89PNG"


def test_one_frame_with_a_mask_painted_in_the_browser(browser, tmp_path):
    import json

    import numpy as np
    from PIL import Image

    save = tmp_path / "out"
    docs = DOCS or tmp_path / "docs"
    with serve_cli(save) as (url, _proc):
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="One-frame").click()
        editor = page.locator("#start-1f")
        with page.expect_file_chooser() as chooser:
            editor.locator("button[aria-label=Upload]").first.click()
        chooser.value.set_files(str(INPUTS / "start.png"))
        expect(editor.locator("button[aria-label=Brush]").first).to_be_visible(timeout=20_000)
        time.sleep(1)  # the image settles on the canvas
        editor.locator("button[aria-label=Brush]").first.click()
        box = editor.locator("canvas").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.6, steps=10)
        page.mouse.up()
        page.locator("#prompt-1f textarea").fill("A cat, smiling.")
        page.locator("#steps-1f input[type=number]").fill("2")
        page.locator("#steps-1f input[type=number]").press("Enter")
        res = page.locator("#resolution-1f input")
        res.fill("48x64")
        res.press("Enter")
        submit(page, "#generate-1f", "#job-id-1f", "")
        expect(page.locator("#progress-1f")).to_contain_text(": done", timeout=120_000)
        expect(page.locator("#result-1f img")).to_be_visible(timeout=30_000)
        shot(page, docs, "ui-one-frame.png")
        page.close()
    (job,) = json.loads((save / ".framepack-ui" / "queue.json").read_text())["jobs"]
    assert job["kind"] == "one_frame" and job["state"] == "done"
    (mask_path,) = job["options"]["control_masks"]
    mask = np.asarray(Image.open(mask_path))
    assert set(np.unique(mask)) == {0, 255}  # painted: kept; the rest: dropped
    (png,) = [Path(f) for f in job["files"]]
    assert png.parent == save and Image.open(png).size == (64, 48)


def test_timeline_rows_seed_list_and_a_lora_in_the_browser(browser, tmp_path):
    """The timeline shows one row per section with its time; a row's prompt and image, a LoRA picked from
    --lora_dir with its multiplier, and a seed list reach the queued jobs; the F1 note names the DiT."""
    import json
    import shutil

    from tests.conftest import MODELS

    save, loras = tmp_path / "out", tmp_path / "loras"
    loras.mkdir()
    shutil.copy(MODELS / "lora_tiny.safetensors", loras / "tiny.safetensors")
    docs = DOCS or tmp_path / "docs"
    with serve_cli(save, "--lora_dir", str(loras)) as (url, _proc):
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.goto(url)
        expect(page.locator("#f1-note")).to_contain_text("F1 jobs use --dit dit_single.safetensors too")
        page.locator("#start-image input[type=file]").set_input_files(str(INPUTS / "start.png"))
        expect(page.locator("#start-image img")).to_be_visible(timeout=20_000)
        fill_form(page, "A cat walks on the grass.")
        page.locator("#sections input").fill("3")
        page.locator("#sections input").press("Enter")
        page.locator("#timeline button").first.click()
        for i, when in enumerate(("0–1.2 s", "1.2–2.4 s", "2.4–3.6 s")):
            expect(page.locator(f"#section-time-{i}")).to_contain_text(when, timeout=20_000)
        expect(page.locator("#section-time-3")).to_have_count(0)
        page.locator("#section-prompt-1 textarea").fill("A cat jumps.")
        page.locator("#section-image-1 input[type=file]").set_input_files(str(INPUTS / "section.png"))
        expect(page.locator("#section-image-1 img")).to_be_visible(timeout=20_000)
        page.locator("#lora-box button").first.click()
        page.locator("#loras input").click()
        page.get_by_role("option", name="tiny.safetensors").click()
        mult = page.locator(".lora-multiplier input[type=number]")
        expect(mult).to_be_visible(timeout=20_000)
        mult.fill("0.5")
        mult.press("Enter")
        page.locator("#seed-mode label", has_text="list").click()
        page.locator("#seed-list input, #seed-list textarea").first.fill("5-6")
        time.sleep(1)  # the row and multiplier edits reach the server
        try:
            first = submit(page, "#generate", "#job-id", "")
        except AssertionError:
            shot(page, tmp_path, "failed.png")
            raise AssertionError(f"no job: {page.locator('#status').inner_text()}") from None
        expect(page.locator("#status")).to_contain_text("Queued 2 jobs (seeds 5, 6", timeout=30_000)
        expect(page.locator("#progress")).to_contain_text(f"Job {first}: done", timeout=180_000)
        shot(page, docs, "ui-generate-timeline.png")
        page.close()
    jobs = json.loads((save / ".framepack-ui" / "queue.json").read_text())["jobs"]
    assert sorted(j["options"]["seed"] for j in jobs) == [5, 6]
    for job in jobs:
        o = job["options"]
        assert o["prompt"] == {"0": "A cat walks on the grass.", "1": "A cat jumps."}
        assert set(o["image"]) == {"0", "1"} and Path(o["image"]["1"]).parent == save / ".framepack-ui" / "uploads"
        assert Path(o["image"]["1"]).read_bytes() == (INPUTS / "section.png").read_bytes()
        assert o["lora_weight"] == [str((loras / "tiny.safetensors").resolve())] and o["lora_multiplier"] == [0.5]
    assert [j["state"] for j in jobs if j["id"] == first] == ["done"]
