"""The functions behind the latent-space explorer, without a browser: drawings to digits,
encode/decode compiled once, walks, slider order, the posterior picture, and the command's
one-line refusals. tests/test_explore_page.py drives the page itself in Chromium."""

import collections
import errno
import functools
import json
import re
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

import vae_jax.explore
from tests.helpers import REPO_ROOT, ctrl_c_reaches_children, save_untrained, untrained_variables
from vae_jax import VAE
from vae_jax.commands import explore as explore_command
from vae_jax.evaluation import likelihood, sampling
from vae_jax.explore import address, drawing, figures, inputs, latent_space
from vae_jax.explore.latent_space import LatentSpace
from vae_jax.model import losses, metrics
from vae_jax.runtime.errors import InputError

Z_DIM = 32


def digit_images(count: int, seed: int = 0) -> np.ndarray:
    """`count` (28, 28, 1) images of random bright strokes: inputs with varied posteriors."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28, 1), np.float32)
    for image in images:
        for _ in range(3):
            top, left = rng.integers(4, 18, size=2)
            image[top:top + rng.integers(3, 10), left:left + rng.integers(2, 8)] = rng.uniform(
                0.5, 1)
    return images


@pytest.fixture(scope="module")
def space():
    return LatentSpace(VAE(), untrained_variables(), digit_images(40))


# --- drawings ----------------------------------------------------------------------------


def stroke_canvas(top: int, left: int, size: int = 280, height: int = 120, width: int = 40):
    """An RGBA layer with an opaque vertical bar (a "1") at (top, left), and nothing else."""
    layer = np.zeros((size, size, 4), np.uint8)
    layer[top:top + height, left:left + width] = (0, 0, 0, 255)
    return layer


def test_a_drawing_becomes_an_mnist_style_digit():
    image = drawing.to_digit_image(stroke_canvas(30, 50)[..., 3] / 255)
    chex.assert_shape(image, (28, 28, 1))
    assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
    rows, columns = np.nonzero(image[..., 0] > drawing.INK_THRESHOLD)
    assert rows.max() - rows.min() + 1 <= 21 and rows.max() - rows.min() + 1 >= 19  # 20 high
    weights = image[..., 0] / image.sum()
    centre = (weights.sum(axis=1) @ np.arange(28), weights.sum(axis=0) @ np.arange(28))
    np.testing.assert_allclose(centre, (13.5, 13.5), atol=0.75)


def test_where_and_how_big_the_digit_is_drawn_does_not_matter():
    first = drawing.drawing_to_image({"layers": [stroke_canvas(20, 30)], "composite": None})
    moved = drawing.drawing_to_image({"layers": [stroke_canvas(140, 200)], "composite": None})
    chex.assert_trees_all_close(first, moved, atol=1e-6)
    bigger = drawing.to_digit_image(stroke_canvas(10, 10, height=240, width=80)[..., 3] / 255)
    chex.assert_trees_all_close(first, bigger, atol=0.08)


def test_the_layers_opacity_is_the_ink_and_a_composite_alone_reads_dark_strokes():
    layer = stroke_canvas(30, 50)
    composite = np.full((280, 280, 3), 255, np.uint8)
    composite[30:150, 50:90] = 0  # black strokes flattened on white
    from_layers = drawing.drawing_to_image({"layers": [layer], "composite": composite})
    from_composite = drawing.drawing_to_image({"layers": [], "composite": composite})
    chex.assert_trees_all_close(from_layers, from_composite, atol=1e-6)


@pytest.mark.parametrize("canvas", [
    None,
    {"layers": [], "composite": None},
    {"layers": [np.zeros((280, 280, 4), np.uint8)], "composite": None},
    {"layers": [], "composite": np.full((280, 280, 3), 255, np.uint8)},
], ids=["nothing", "no composite", "a transparent layer", "a white composite"])
def test_an_empty_canvas_is_one_line_naming_it(canvas):
    with pytest.raises(drawing.EmptyDrawing, match="^the canvas is empty: draw a digit first$"):
        drawing.drawing_to_image(canvas)


# --- the latent space --------------------------------------------------------------------


def test_encode_is_the_models_encoder_and_decode_its_decoder(space):
    model, variables = VAE(), untrained_variables()
    image = digit_images(1, seed=3)[0]
    posterior = space.encode(image)
    mean, stddev = model.apply(variables, image[None], train=False, method=VAE.encode)
    chex.assert_trees_all_close((posterior.mean, posterior.stddev), (mean[0], stddev[0]),
                                atol=1e-6)
    chex.assert_trees_all_close(posterior.kl, losses.kl_per_dimension(mean, stddev)[0],
                                atol=1e-6)
    z = np.random.default_rng(0).normal(size=(3, Z_DIM)).astype(np.float32)
    chex.assert_trees_all_close(
        space.decode(z), jax.nn.sigmoid(likelihood.jitted_decoder(model)(variables, z)),
        atol=1e-6)
    chex.assert_trees_all_close(space.reconstruct(posterior), space.decode(mean)[0])


def test_each_view_compiles_once():
    guard = functools.partial(chex.assert_max_traces, n=1)
    space = LatentSpace(VAE(), untrained_variables(), None, trace_guard=guard)
    for image in digit_images(4):
        space.encode(image)                         # the encode view, a drawing or a test image
    for value in np.linspace(-3, 3, 6):             # a slider moving
        space.decode(np.full((1, Z_DIM), value, np.float32))
    with pytest.raises(AssertionError, match="traced > 1 times"):  # the guard can fail
        space.decode(np.zeros((2, Z_DIM), np.float32))


def test_after_the_warm_up_the_pages_first_views_compile_nothing():
    """What `vae-jax-explore` compiles before it prints its address: an encode, a
    reconstruction, a slider's decode and a walk then trace nothing (counted, not timed)."""
    traces = collections.Counter()

    def count(function):
        def traced(*args):
            traces[function] += 1
            return function(*args)
        return traced

    space = LatentSpace(VAE(), untrained_variables(), None, trace_guard=count)
    space.warm_up()
    warmed = dict(traces)
    assert sum(warmed.values()) == 3  # encode; decode of one latent and of a walk
    image, other = digit_images(2)
    space.reconstruct(space.encode(image))
    space.decode(np.zeros((1, Z_DIM), np.float32))
    space.walk(image, other)
    assert dict(traces) == warmed
    space.decode(np.zeros((2, Z_DIM), np.float32))  # a shape the page never uses: traced
    assert sum(traces.values()) == 4


def test_a_walk_is_the_decoded_straight_line_between_two_posterior_means(space):
    start, end = digit_images(2, seed=7)
    path = latent_space.interpolate(space.encode(start).mean, space.encode(end).mean)
    chex.assert_shape(path, (latent_space.WALK_STEPS, Z_DIM))
    chex.assert_trees_all_close(path[0], space.encode(start).mean)
    chex.assert_trees_all_close(path[-1], space.encode(end).mean, atol=1e-6)
    chex.assert_trees_all_close(path[1] - path[0], path[-1] - path[-2], atol=1e-5)
    chex.assert_trees_all_close(space.walk(start, end), space.decode(path), atol=1e-6)


def test_samples_are_what_vae_jax_sample_draws_for_the_seed(space):
    expected = sampling.sample_images(VAE(), untrained_variables(), jax.random.key(4),
                                      latent_space.SAMPLE_GRID)
    chex.assert_trees_all_close(space.samples(4), expected)
    assert not np.allclose(space.samples(5), expected)


def test_latents_are_ranked_by_mean_kl_and_marked_active_as_the_metrics_say(space):
    means, stddevs = space.encode_many(space.reference_images)
    mean_kl = np.asarray(losses.kl_per_dimension(means, stddevs)).mean(axis=0)
    assert sorted(space.use.order) == list(range(Z_DIM))
    assert np.all(np.diff(mean_kl[space.use.order]) <= 1e-6)
    np.testing.assert_array_equal(space.use.active,
                                  metrics.latent_activity(means) > metrics.ACTIVE_UNIT_THRESHOLD)
    unknown = LatentSpace(VAE(), untrained_variables(), None)
    np.testing.assert_array_equal(unknown.use.order, np.arange(Z_DIM))


def test_sliders_show_a_latent_in_their_order_and_give_it_back():
    order = np.random.default_rng(1).permutation(Z_DIM)
    z = np.random.default_rng(2).normal(size=Z_DIM).astype(np.float32)
    values = latent_space.slider_values(z, order)
    assert values[0] == round(float(z[order[0]]), 2)
    chex.assert_trees_all_close(latent_space.latent_from_sliders(values, order), z, atol=0.005)
    far = latent_space.slider_values(np.full(Z_DIM, 9.0), order)
    assert max(far) == latent_space.SLIDER_RANGE


@pytest.mark.parametrize("image, message", [
    (np.zeros((28, 27, 1)), r"28x28 grayscale, got shape \(28, 27, 1\)"),
    (np.full((28, 28, 1), 2.0), r"pixels must be in \[0, 1\]"),
    (np.full((28, 28), np.nan), r"pixels must be in \[0, 1\]"),
])
def test_a_bad_image_or_latent_is_one_line(space, image, message):
    with pytest.raises(InputError, match=message):
        space.encode(image)
    with pytest.raises(InputError, match=r"latents must be finite with shape \(n, 32\)"):
        space.decode(np.zeros((1, 31)))


def test_the_posterior_picture_and_enlarged_digits(space):
    posterior = space.encode(digit_images(1)[0])
    picture = figures.posterior_figure(posterior, space.use)
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.dtype == np.uint8
    assert picture.shape[0] > 300 and picture.shape[1] > 500 and picture.std() > 10
    big = figures.enlarge(digit_images(1)[0])
    chex.assert_shape(big, (224, 224))
    np.testing.assert_array_equal(big[::8, ::8], np.round(digit_images(1)[0][..., 0] * 255))
    chex.assert_shape(figures.strip(digit_images(10)), (30 * 3, 300 * 3))


# --- the command ---------------------------------------------------------------------------


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_workdir_without_a_model_exits_2_in_one_line(tmp_path, capsys):
    port = free_port()
    assert explore_command.main(["--workdir", str(tmp_path), "--port", str(port)]) == 2
    assert "no saved variables in" in one_line_error(capsys)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_port_in_use_exits_2_in_one_line(tmp_path, capsys):
    workdir = save_untrained(tmp_path / "model")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert explore_command.main(["--workdir", workdir, "--port", str(port)]) == 2
    assert one_line_error(capsys).endswith(
        f"error: --port {port} on 127.0.0.1 is in use: choose another with --port")


def test_without_the_explore_extra_the_command_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` fails as if missing
    monkeypatch.delitem(sys.modules, "vae_jax.explore.page", raising=False)
    monkeypatch.delattr(vae_jax.explore, "page", raising=False)
    assert explore_command.main(["--workdir", save_untrained(tmp_path / "m")]) == 2
    assert "needs the explore extra (gradio): pip install -e '.[explore]'" in one_line_error(
        capsys)


def test_the_page_is_served_on_localhost_and_frees_its_port_when_closed(space):
    import urllib.request

    from vae_jax.explore import page
    site = page.build_page(space, "untrained")
    port = free_port()
    url = page.serve(site, "127.0.0.1", port)
    try:
        assert url == f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(f"{url}config", timeout=30) as response:
            config = response.read().decode()
        for element in ("canvas", "posterior-table", "slider-0", "walk-strip", "sample-grid"):
            assert f'"elem_id":"{element}"' in config.replace(" ", "")
        with pytest.raises(InputError, match=f"--port {port} on 127.0.0.1 is in use"):
            address.check_address("127.0.0.1", port)
    finally:
        site.close(verbose=False)
    address.check_address("127.0.0.1", port)


# --- what the fields accept ------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [
    (-1, "-1"), (512, "512"), (10**12, "1000000000000"), (1.5, "1.5"), ("abc", "'abc'"),
    (None, "None"), (True, "True"), (float("nan"), "nan"), (float("inf"), "inf"),
    (10**400, "1000000000000000000000000000000000000..."), ("\x1b[2J", r"'\x1b[2J'"),
])
def test_a_bad_whole_number_is_refused_never_rounded(value, shown):
    with pytest.raises(InputError) as refused:
        inputs.whole_number(value, 0, 511, "a test image")
    assert str(refused.value) == f"a test image is a whole number from 0 to 511, got {shown}"


def test_good_whole_numbers_and_latents_pass_as_numbers():
    assert [inputs.whole_number(value, 0, 511, "x") for value in (0, 511, 7.0)] == [0, 511, 7]
    assert inputs.latent_values([-4, 0.25, 4.0], ["z3", "z0", "z1"]) == [-4.0, 0.25, 4.0]


@pytest.mark.parametrize("values, message", [
    ([0.0, 4.5], "the z0 slider takes a value from -4 to 4, got 4.5"),
    ([float("nan"), 0.0], "the z3 slider takes a value from -4 to 4, got nan"),
    ([0.0, "abc"], "the z0 slider takes a value from -4 to 4, got 'abc'"),
    ([0.0], "the page has 2 latent sliders, got 1 values"),
])
def test_a_bad_latent_is_refused_naming_its_slider(values, message):
    with pytest.raises(InputError, match=re.escape(message)):
        inputs.latent_values(values, ["z3", "z0"])


def api_call(url: str, name: str, data: list) -> tuple[str, object]:
    """A crafted call of the page's API endpoint `name`: (the event, its data)."""
    import urllib.request
    request = urllib.request.Request(f"{url}gradio_api/call/{name}",
                                     data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{name}/{event_id}", timeout=60) as response:
        lines = response.read().decode().splitlines()
    event = [line for line in lines if line.startswith("event: ")][-1].removeprefix("event: ")
    data = [line for line in lines if line.startswith("data: ")][-1].removeprefix("data: ")
    return event, json.loads(data)


def left_as_they_were(outputs: list) -> bool:
    """Whether a call's outputs are all gradio's "no change" (the views keep what they show)."""
    return all(output is None or output.get("__type__") == "update" for output in outputs)


def test_crafted_api_calls_change_nothing_and_print_nothing(space, capfd):
    from vae_jax.explore import page
    site = page.build_page(space, "untrained")
    url = page.serve(site, "127.0.0.1", free_port())
    try:
        z_dim = space.z_dim
        for name, data in [("encode_test_image", [-1]), ("encode_test_image", [40]),
                           ("encode_test_image", [10**12]), ("encode_test_image", [1.5]),
                           ("encode_test_image", ["abc"]), ("decode", [9.0] + [0.0] * (z_dim - 1)),
                           ("decode", ["abc"] + [0.0] * (z_dim - 1)), ("sample", ["abc"]),
                           ("sample", [-5]), ("walk", [0, None]), ("walk", [0.5, 1])]:
            event, outputs = api_call(url, name, data)
            assert event == "complete" and left_as_they_were(outputs), (name, data, outputs)
        for name, data in [("decode", [0.0, 0.0]), ("encode_drawing", ["abc"])]:
            event, error = api_call(url, name, data)
            assert event == "error", (name, data)
            assert error["error"].startswith("the request is not one the page sends: ")
            assert "\n" not in error["error"]
        event, outputs = api_call(url, "encode_test_image", [3])  # a good call still answers
        assert event == "complete" and not left_as_they_were(outputs)
    finally:
        site.close(verbose=False)
    assert "Traceback" not in capfd.readouterr().err


# --- where it serves -------------------------------------------------------------------------


def test_a_host_this_machine_does_not_know_is_blamed_on_host(monkeypatch):
    def unknown(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    with pytest.raises(InputError, match=re.escape(
            "--host 'no-such-host' is not an address or a name this machine knows (Name or "
            "service not known): use 127.0.0.1 for this machine only")):
        address.check_address("no-such-host", 7860)


def test_an_address_of_another_machine_is_blamed_on_host(monkeypatch):
    class NotHere(socket.socket):
        def bind(self, where):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    monkeypatch.setattr(socket, "socket", NotHere)
    with pytest.raises(InputError, match=re.escape(
            "--host 192.0.2.1 is not an address of this machine: use 127.0.0.1")):
        address.check_address("192.0.2.1", 7860)


def test_only_loopback_serves_without_a_warning():
    for host in ("127.0.0.1", "localhost", "::1"):
        assert address.exposure_warning(host, 7860) is None, host
    assert address.exposure_warning("0.0.0.0", 7860) == (
        "--host 0.0.0.0 serves the page on every network interface: other machines that "
        "reach this one can open it at port 7860")
    assert "other machines can reach it" in address.exposure_warning("192.0.2.1", 7860)
    assert address.page_url("::1", 80) == "http://[::1]:80/"


def test_a_host_other_than_loopback_is_one_warning_and_the_address_served(tmp_path, capsys,
                                                                          monkeypatch):
    served = {}

    def serve(site, host, port):
        served.update(host=host, port=port)
        return address.page_url(host, port)
    from vae_jax.explore import page
    monkeypatch.setattr(page, "serve", serve)  # no server open to other machines in a test
    monkeypatch.setattr(explore_command, "wait_for_ctrl_c", lambda: None)
    port = free_port()
    workdir = save_untrained(tmp_path / "model")
    with pytest.warns(UserWarning) as warned:
        assert explore_command.main(["--workdir", workdir, "--port", str(port), "--host",
                                     "0.0.0.0", "--data-dir", str(tmp_path / "no-data"),
                                     "--no-download"]) == 0
    assert served == {"host": "0.0.0.0", "port": port}
    assert capsys.readouterr().out.endswith(f"at http://0.0.0.0:{port}/ (Ctrl-C stops)\n")
    about_host = [str(warning.message) for warning in warned if "--host" in str(warning.message)]
    assert about_host == [address.exposure_warning("0.0.0.0", port)]


# Ctrl-C sent to the process may land on any of its threads (the server's, XLA's); here a
# thread sends SIGINT to itself, the case the main thread is not woken by.
SIGINT_ON_ANOTHER_THREAD = """
import signal, threading, time
from vae_jax.commands.explore import wait_for_ctrl_c

def interrupt_from_this_thread():
    time.sleep(0.3)
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)

threading.Thread(target=interrupt_from_this_thread, daemon=True).start()
wait_for_ctrl_c()
print("returned")
"""


def test_ctrl_c_stops_the_explorer_whichever_thread_the_signal_lands_on():
    with ctrl_c_reaches_children():
        finished = subprocess.run([sys.executable, "-c", SIGINT_ON_ANOTHER_THREAD],
                                  capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert (finished.returncode, finished.stdout) == (0, "returned\n"), finished.stderr


# The page served in a process where every connection off this machine is refused and
# recorded: gradio's telemetry (api.gradio.app) and its Hugging Face lookups would show.
OFFLINE_PAGE = """
import json, os, socket, time, urllib.request
os.environ.pop("GRADIO_ANALYTICS_ENABLED", None)  # as a user's shell has it
LOCAL = ("127.0.0.1", "::1", "localhost", "0.0.0.0", None)
attempts = []
resolve, connect = socket.getaddrinfo, socket.socket.connect

def recorded_resolve(host, *args, **kwargs):
    if host not in LOCAL:
        attempts.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "offline")
    return resolve(host, *args, **kwargs)

def recorded_connect(self, address):
    if isinstance(address, tuple) and address[0] not in LOCAL:
        attempts.append(str(address[0]))
        raise OSError("offline")
    return connect(self, address)

socket.getaddrinfo, socket.socket.connect = recorded_resolve, recorded_connect
import gradio.analytics
from tests.helpers import untrained_variables
from tests.test_explore import digit_images, free_port
from vae_jax import VAE
from vae_jax.explore import page
from vae_jax.explore.latent_space import LatentSpace
site = page.build_page(LatentSpace(VAE(), untrained_variables(), digit_images(4)), "untrained")
url = page.serve(site, "127.0.0.1", free_port())
urllib.request.urlopen(url, timeout=30).read()
time.sleep(2)  # telemetry goes out from background threads
site.close(verbose=False)
print(json.dumps({"attempts": attempts, "gradio_analytics": gradio.analytics.analytics_enabled(),
                  "page_analytics": site.analytics_enabled}))
"""


@pytest.mark.slow(reason="a process that serves the page with the network refused")
def test_the_page_reaches_for_nothing_off_this_machine():
    """No telemetry: gradio's two switches are off (its environment variable, which the page
    module sets before gradio reads it, and the page's own `analytics_enabled`), and a page
    served and opened makes no connection off this machine."""
    finished = subprocess.run([sys.executable, "-c", OFFLINE_PAGE], capture_output=True,
                              text=True, timeout=300, cwd=REPO_ROOT)
    assert finished.returncode == 0, finished.stderr[-2000:]
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report == {"attempts": [], "gradio_analytics": False, "page_analytics": False}
