"""The explorer's page in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright against the page served on localhost, and the command's start and Ctrl-C.

The slow tier. Skipped only where Chromium is missing and $VAE_JAX_REQUIRE_BROWSER is not
set; `.ci/run` installs Chromium and sets it, so there a missing browser fails.
"""

import base64
import io
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO_ROOT, ctrl_c_reaches_children, save_untrained, untrained_variables
from tests.test_explore import digit_images, free_port
from vae_jax import VAE
from vae_jax.explore import figures, latent_space
from vae_jax.explore.latent_space import LatentSpace, latent_from_sliders

pytestmark = pytest.mark.slow(reason="a browser and a web server")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("VAE_JAX_REQUIRE_BROWSER"):
    pytest.skip("no chromium here (apt-get install -y chromium)", allow_module_level=True)
# As the machine's probe starts it: nothing in the background reaches for the network.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]
WAIT_MS = 30_000
TIMINGS_FILE = os.environ.get("VAE_JAX_EXPLORE_TIMINGS")  # where to append the timings


@pytest.fixture(scope="module")
def served():
    from vae_jax.explore import page as page_module  # gradio: only when the tier runs
    space = LatentSpace(VAE(), untrained_variables(), digit_images(12))
    site = page_module.build_page(space, "untrained")
    url = page_module.serve(site, "127.0.0.1", free_port())
    yield space, url
    site.close(verbose=False)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(served, browser):
    _, url = served
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.requests_elsewhere = []
    tab.on("request", lambda request: tab.requests_elsewhere.append(request.url)
           if not request.url.startswith((url, "data:", "blob:")) else None)
    tab.goto(url)
    tab.get_by_text("The posterior in numbers").click()  # unfold the table
    tab.wait_for_function("document.querySelectorAll('#posterior-table td').length > 0",
                          timeout=WAIT_MS)  # the page opened with test image 0 encoded
    yield tab
    assert tab.requests_elsewhere == []  # nothing but the local server: no fonts, no analytics
    tab.close()


def image_source(page, element_id: str) -> str:
    return page.eval_on_selector(f"#{element_id} img", "img => img.src")


def wait_for_new_image(page, element_id: str, old_source: str | None) -> float:
    """Waits until #element_id shows another image; returns the milliseconds it took."""
    start = time.perf_counter()
    page.wait_for_function(
        "([id, old]) => { const img = document.querySelector(`#${id} img`);"
        " return img && img.complete && img.naturalWidth > 0 && img.src !== old; }",
        arg=[element_id, old_source], timeout=WAIT_MS)
    return (time.perf_counter() - start) * 1000


def shown_pixels(page, element_id: str) -> np.ndarray:
    """The image #element_id shows, as the browser fetched it: (H, W) uint8."""
    data = page.evaluate(
        "async (id) => { const img = document.querySelector(`#${id} img`);"
        " const blob = await (await fetch(img.src)).blob();"
        " return await new Promise(done => { const reader = new FileReader();"
        " reader.onload = () => done(reader.result.split(',')[1]);"
        " reader.readAsDataURL(blob); }); }", element_id)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))


def table_rows(page) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#posterior-table tbody tr",
        "rows => rows.map(row => [...row.cells].map(cell => cell.textContent.trim()))")


def slider_values(page) -> list[float]:
    return [float(value) for value in page.eval_on_selector_all(
        "[id^=slider-] input[type=number]", "inputs => inputs.map(input => input.value)")]


def record(name: str, milliseconds: list[float]) -> None:
    line = (f"{name}: median {np.median(milliseconds):.0f} ms, max {max(milliseconds):.0f} ms "
            f"over {len(milliseconds)}")
    print(line)
    if TIMINGS_FILE:
        with open(TIMINGS_FILE, "a") as file:
            file.write(line + "\n")


def test_encoding_a_test_image_shows_what_vae_encode_gives(served, page):
    space, _ = served
    timings = []
    for index in (3, 7, 5):
        old = image_source(page, "input-image")
        page.fill("#test-index input", str(index))
        page.click("#encode-test")
        timings.append(wait_for_new_image(page, "input-image", old))
        page.wait_for_function(
            "mean => document.querySelector('#posterior-table td:nth-child(2)')"
            ".textContent.trim() === mean",
            arg=f"{space.encode(space.reference_images[index]).mean[space.use.order[0]]:.3f}",
            timeout=WAIT_MS)
    mean, stddev = VAE().apply(untrained_variables(), space.reference_images[5][None],
                               train=False, method=VAE.encode)
    rows = table_rows(page)
    assert [row[0] for row in rows] == [f"z{d}" for d in space.use.order]
    shown = np.array([[float(row[1]), float(row[2])] for row in rows])
    order = space.use.order
    chex.assert_trees_all_close(shown[:, 0], np.asarray(mean[0])[order], atol=6e-4)
    chex.assert_trees_all_close(shown[:, 1], np.asarray(stddev[0])[order], atol=6e-4)
    visible = slider_values(page)  # some gradio versions draw folded sliders only when shown
    from vae_jax.explore.page import VISIBLE_SLIDERS
    assert len(visible) >= VISIBLE_SLIDERS
    chex.assert_trees_all_close(np.array(visible), np.asarray(mean[0])[order[:len(visible)]],
                                atol=6e-3)
    expected = figures.enlarge(space.reconstruct(space.encode(space.reference_images[5])))
    np.testing.assert_array_equal(shown_pixels(page, "reconstruction"), expected)
    record("encode a test image (click to image shown)", timings)


def test_moving_a_slider_redraws_the_decoded_image(served, page):
    space, _ = served
    timings = []
    for value in ("2.5", "-1.75", "0.5", "3.25", "-3"):
        old = image_source(page, "decoded")
        page.locator("#slider-0 input[type=range]").fill(value)
        timings.append(wait_for_new_image(page, "decoded", old))
    assert slider_values(page)[0] == -3.0
    values = latent_space.slider_values(space.encode(space.reference_images[0]).mean,
                                        space.use.order)  # the page opened with image 0
    values[0] = -3.0
    expected = figures.enlarge(space.decode(latent_from_sliders(values, space.use.order)[None])[0])
    shown = shown_pixels(page, "decoded")
    assert np.abs(shown.astype(int) - expected).max() <= 1
    assert not np.array_equal(shown, shown_pixels(page, "reconstruction"))
    record("slider move (input to image shown)", timings)


def test_a_drawing_is_encoded_and_an_empty_canvas_is_a_message(page):
    old = image_source(page, "input-image")
    page.click("#encode-drawing")
    page.get_by_text("the canvas is empty: draw a digit first").first.wait_for(timeout=WAIT_MS)
    assert image_source(page, "input-image") == old  # the views keep what they showed
    assert page.get_by_text("Error", exact=True).count() == 0  # none is marked as failed
    assert page.locator("#input-image img").is_visible()
    page.click("#canvas button[aria-label=Brush]")
    box = page.locator("#canvas canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y - 80)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(x + 2 * step, y - 80 + 8 * step)
    page.mouse.up()
    page.click("#encode-drawing")
    wait_for_new_image(page, "input-image", old)
    drawn = shown_pixels(page, "input-image")
    assert drawn.max() > 200 and (drawn > 100).mean() > 0.02  # a stroke, white on black


def test_a_bad_test_image_number_is_one_warning_and_the_views_stay(page, capfd):
    shown = image_source(page, "input-image")
    for typed in ("-1", "512", "1000000000000", "1.5"):
        page.fill("#test-index input", typed)
        page.click("#encode-test")
        page.get_by_text(f"a test image is a whole number from 0 to 11, got {typed}").first \
            .wait_for(timeout=WAIT_MS)
        assert page.get_by_text("Error", exact=True).count() == 0  # no view marked as failed
        assert image_source(page, "input-image") == shown  # the views keep what they showed
    assert page.locator("#input-image img").is_visible()
    page.fill("#test-index input", "4")  # the field works again after the refusals
    page.click("#encode-test")
    wait_for_new_image(page, "input-image", shown)
    assert "Traceback" not in capfd.readouterr().err


def test_a_crafted_call_from_the_page_changes_nothing(served, page, capfd):
    """A call the widgets would never send, made from the page's own script (a slider far
    outside its range): a warning for the caller, the views as they were, a quiet terminal."""
    _, url = served
    shown = image_source(page, "decoded")
    event = page.evaluate(
        "async ([url, values]) => {"
        " const call = await (await fetch(url + 'gradio_api/call/decode', {method: 'POST',"
        "  headers: {'Content-Type': 'application/json'},"
        "  body: JSON.stringify({data: values})})).json();"
        " return await (await fetch(url + 'gradio_api/call/decode/' + call.event_id)).text(); }",
        [url, [1e9] + [0.0] * 31])
    assert "event: complete" in event and '"__type__": "update"' in event, event
    assert image_source(page, "decoded") == shown
    assert "Traceback" not in capfd.readouterr().err


def test_walk_and_sample_views(served, page, capfd):
    space, _ = served
    page.get_by_role("tab", name="Walk").click()
    page.fill("#walk-from input", "2")
    page.fill("#walk-to input", "9")
    page.click("#walk")
    wait_for_new_image(page, "walk-strip", None)
    expected = figures.strip(space.walk(space.reference_images[2], space.reference_images[9]))
    assert np.abs(shown_pixels(page, "walk-strip").astype(int) - expected).max() <= 1
    page.fill("#walk-to input", "12")
    page.click("#walk")
    page.get_by_text("a test image is a whole number from 0 to 11, got 12").first.wait_for(
        timeout=WAIT_MS)
    assert "Traceback" not in capfd.readouterr().err  # bad input: a message, not a trace
    page.get_by_role("tab", name="Sample").click()
    old = image_source(page, "sample-grid")
    page.fill("#seed input", "5")
    page.click("#sample")
    wait_for_new_image(page, "sample-grid", old)
    np.testing.assert_array_equal(shown_pixels(page, "sample-grid"),
                                  figures.grid(space.samples(5)))


def test_the_command_prints_its_address_serves_and_stops_on_ctrl_c(tmp_path):
    workdir = save_untrained(tmp_path / "model")
    port = free_port()
    with ctrl_c_reaches_children():
        process = subprocess.Popen(
            [sys.executable, "-m", "vae_jax.commands.explore", "--workdir", workdir, "--port",
             str(port), "--data-dir", str(tmp_path / "no-data"), "--no-download"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.strip() == (f"python -m vae_jax.commands.explore: exploring {workdir} at "
                                f"http://127.0.0.1:{port}/ (Ctrl-C stops)")
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"gradio" in response.read().lower()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert process.stdout.read() == ""  # nothing after the address: no gradio lines
    err = process.stderr.read().strip().splitlines()
    assert err[-1] == "python -m vae_jax.commands.explore: stopped", err
    assert len(err) == 2 and "warning: no test images, so only drawing on the page" in err[0]
