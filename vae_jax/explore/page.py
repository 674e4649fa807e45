"""The explorer's web page: gradio Blocks over a `LatentSpace`, served on this machine.

Four views share one page: *Encode* (draw a digit or pick a test image; see its
reconstruction and posterior), *Decode* (a slider per latent, most informative first,
starting at the encoded image's means), *Walk* (a line in z between two test images) and
*Sample* (prior samples for a seed). Nothing leaves the machine: no analytics, no share
link, the theme's fonts are the browser's own, and the server binds to localhost unless told
otherwise.
"""

from __future__ import annotations

import os
import socket

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio reads it: no telemetry

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from vae_jax.explore import drawing, figures  # noqa: E402
from vae_jax.explore.latent_space import (  # noqa: E402
    SLIDER_DECIMALS,
    SLIDER_RANGE,
    WALK_STEPS,
    LatentSpace,
    Posterior,
    latent_from_sliders,
    slider_values,
)
from vae_jax.runtime.errors import InputError, first_line  # noqa: E402
from vae_jax.training.config import MAX_SEED  # noqa: E402

DEFAULT_PORT = 7860  # gradio's
DIGIT_HEIGHT = 200   # pixels on the page for a 28x28 digit
VISIBLE_SLIDERS = 8  # the most informative latents; the others fold away
TABLE_HEADERS = ["latent", "mean", "std dev", "KL (nats)", "active"]
# The browser's own fonts: gradio's default theme would fetch Google's.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])

INTRO = """\
# The latent space of `{run}`
The encoder turns an image into a **mean** and a **standard deviation** for each of the
{z_dim} latents: a Gaussian q(z | x). Training pulls each one towards the prior N(0, 1)
(the KL term) unless the decoder needs it to tell images apart (the reconstruction term).
{use}
"""


def posterior_table(posterior: Posterior, space: LatentSpace) -> str:
    """The posterior as an HTML table in the sliders' order: latent, mean, std dev, KL from
    the prior (nats) and whether the latent is active over the test images."""
    rows = []
    for d in space.use.order:
        active = ("yes" if space.use.active[d] else "no") if space.use.measured else "?"
        rows.append(f"<tr><td>z{d}</td><td>{posterior.mean[d]:.3f}</td>"
                    f"<td>{posterior.stddev[d]:.3f}</td><td>{posterior.kl[d]:.3f}</td>"
                    f"<td>{active}</td></tr>")
    head = "".join(f"<th>{name}</th>" for name in TABLE_HEADERS)
    return (f"<table class='posterior'><caption>q(z | x), most informative latents first"
            f"</caption><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def use_summary(space: LatentSpace, note: str | None) -> str:
    """The heading's last sentence: how many latents the test images use, or why the page
    has no test images (`note`)."""
    if not space.use.measured:
        return f"No test images were loaded ({note}): the latents are in index order." if note \
            else "No test images were loaded: the latents are in index order."
    count = len(space.reference_images)
    active = int(space.use.active.sum())
    return (f"Over the {count:,} test images, **{active} of {space.z_dim} latents are active** "
            f"(their mean varies from image to image); the sliders and the plot list the most "
            f"informative first (highest mean KL).")


def on_page(handler, outputs: int = 1):
    """`handler` with bad input as one message on the page, its `outputs` left as they were
    (an exception would mark each of them as failed) and no traceback printed."""
    def run(*args):
        try:
            return handler(*args)
        except InputError as error:
            gr.Warning(first_line(error))
            return gr.skip() if outputs == 1 else [gr.skip()] * outputs
    return run


class Views:
    """What the page's views compute from their inputs, over `space` and its test images."""

    def __init__(self, space: LatentSpace, note: str | None):
        self.space, self.note = space, note
        self.images = space.reference_images
        self.count = 0 if self.images is None else len(self.images)
        self.order = space.use.order

    def test_image(self, index) -> np.ndarray:
        if self.count == 0:
            raise InputError(f"no test images were loaded{f' ({self.note})' if self.note else ''}")
        if index is None or not float(index).is_integer() or not 0 <= index < self.count:
            raise InputError(f"a test image is a number from 0 to {self.count - 1}, got {index}")
        return self.images[int(index)]

    def encoded(self, image: np.ndarray) -> list:
        """The encode view's outputs for `image`: the input, its reconstruction (also the
        sliders' picture), the posterior's plot and table, its mean, the sliders."""
        posterior = self.space.encode(image)
        reconstruction = self.space.reconstruct(posterior)
        return ([figures.enlarge(image), figures.enlarge(reconstruction),
                 figures.enlarge(reconstruction),
                 figures.posterior_figure(posterior, self.space.use),
                 posterior_table(posterior, self.space), posterior.mean.tolist()]
                + slider_values(posterior.mean, self.order))

    def decoded(self, *values) -> np.ndarray:
        return figures.enlarge(self.space.decode(latent_from_sliders(values, self.order)[None])[0])

    def back_to_means(self, mean) -> list:
        mean = np.asarray(mean)
        return ([figures.enlarge(self.space.decode(mean[None])[0])]
                + slider_values(mean, self.order))

    def walk(self, start, end) -> np.ndarray:
        return figures.strip(self.space.walk(self.test_image(start), self.test_image(end)))

    def samples(self, value) -> np.ndarray:
        if value is None or not float(value).is_integer() or not 0 <= value <= MAX_SEED:
            raise InputError(f"a seed is a whole number from 0 to {MAX_SEED}, got {value}")
        return figures.grid(self.space.samples(int(value)))


def build_page(space: LatentSpace, run_name: str, note: str | None = None) -> gr.Blocks:
    """The page for `space`; `run_name` heads it, `note` says why there are no test images."""
    views = Views(space, note)
    with gr.Blocks(title=f"vae-jax explorer: {run_name}", analytics_enabled=False) as page:
        gr.Markdown(INTRO.format(run=run_name, z_dim=space.z_dim,
                                 use=use_summary(space, note)))
        with gr.Tab("Encode and decode"):
            encoded = _encode_and_decode_tab(views)
        with gr.Tab("Walk"):
            _walk_tab(views)
        with gr.Tab("Sample"):
            sample_grid = _sample_tab(views)
        if views.count:
            page.load(lambda: views.encoded(views.images[0]), None, encoded)
        page.load(lambda: views.samples(0), None, sample_grid)
    return page


def _encode_and_decode_tab(views: Views) -> list:
    """Draw or pick an image, see its reconstruction and posterior, move its latents;
    returns the components an encode fills."""
    count = views.count
    with gr.Row():
        with gr.Column(scale=3):
            canvas = gr.Sketchpad(label="Draw a digit: pick the brush, then draw",
                                  canvas_size=(280, 280), fixed_canvas=True, type="numpy",
                                  layers=False, elem_id="canvas",
                                  brush=gr.Brush(colors=["#000000"], default_color="#000000",
                                                 color_mode="fixed", default_size=9))
            encode_drawing = gr.Button("Encode the drawing", variant="primary",
                                       elem_id="encode-drawing")
            with gr.Row():
                index = gr.Number(0, label=f"or a test image (0 to {max(count - 1, 0)})",
                                  precision=0, minimum=0, maximum=max(count - 1, 0),
                                  interactive=count > 0, elem_id="test-index")
                encode_test = gr.Button("Encode the test image", interactive=count > 0,
                                        elem_id="encode-test")
        with gr.Column(scale=4):
            with gr.Row():
                seen = _picture("Input, 28x28", "input-image", DIGIT_HEIGHT)
                reconstruction = _picture("Reconstruction", "reconstruction", DIGIT_HEIGHT)
                decoded = _picture("From the sliders", "decoded", DIGIT_HEIGHT)
            plot = _picture("Posterior", "posterior-plot")
    gr.Markdown("### Decode: move a latent and watch the image\nEach slider is one latent, "
                "starting at the encoded image's mean; the prior puts 95% of its mass between "
                "-2 and 2.")
    order = views.order
    sliders = []
    with gr.Row():
        for position, dimension in enumerate(order[:VISIBLE_SLIDERS]):
            sliders.append(_slider(views.space, position, dimension))
    if len(order) > VISIBLE_SLIDERS:
        with gr.Accordion(f"The other {len(order) - VISIBLE_SLIDERS} latents", open=False):
            with gr.Row():
                for position, dimension in enumerate(order[VISIBLE_SLIDERS:], VISIBLE_SLIDERS):
                    sliders.append(_slider(views.space, position, dimension))
    reset = gr.Button("Back to the encoded means", elem_id="reset")
    with gr.Accordion("The posterior in numbers", open=False):
        table = gr.HTML(elem_id="posterior-table")
    posterior_mean = gr.State([0.0] * views.space.z_dim)

    encoded = [seen, reconstruction, decoded, plot, table, posterior_mean, *sliders]
    encode_drawing.click(on_page(lambda value: views.encoded(drawing.drawing_to_image(value)),
                                 len(encoded)), canvas, encoded)
    encode_test.click(on_page(lambda i: views.encoded(views.test_image(i)), len(encoded)),
                      index, encoded)
    index.submit(on_page(lambda i: views.encoded(views.test_image(i)), len(encoded)), index,
                 encoded)
    for slider in sliders:
        slider.input(on_page(views.decoded), sliders, decoded, trigger_mode="always_last",
                     show_progress="hidden")
    reset.click(views.back_to_means, posterior_mean, [decoded, *sliders])
    return encoded


def _walk_tab(views: Views) -> None:
    """The decoder along a line in z between two test images."""
    gr.Markdown(f"The decoder along the straight line in z from one test image's posterior "
                f"mean to another's, in {WALK_STEPS} steps.")
    with gr.Row():
        walk_from = gr.Number(0, label="from test image", precision=0, elem_id="walk-from")
        walk_to = gr.Number(1, label="to test image", precision=0, elem_id="walk-to")
        walk_button = gr.Button("Walk", variant="primary", elem_id="walk")
    walk_strip = _picture("The walk", "walk-strip")
    walk_button.click(on_page(views.walk), [walk_from, walk_to], walk_strip)


def _sample_tab(views: Views) -> gr.Image:
    """Prior samples for a seed; returns the grid's component."""
    gr.Markdown("z ~ N(0, I) decoded: what the model makes up. The same seed gives the same "
                "grid as `vae-jax-sample --num 64 --seed SEED`.")
    with gr.Row():
        seed = gr.Number(0, label=f"seed (0 to {MAX_SEED})", precision=0, elem_id="seed")
        sample_button = gr.Button("Sample", variant="primary", elem_id="sample")
    sample_grid = _picture("64 samples from the prior", "sample-grid")
    sample_button.click(on_page(views.samples), seed, sample_grid)
    return sample_grid


def _picture(label: str, element_id: str, height: int | None = None) -> gr.Image:
    """An output picture, sent as PNG (lossless: the page shows the model's pixels)."""
    return gr.Image(label=label, format="png", height=height, interactive=False,
                    elem_id=element_id)


def _slider(space: LatentSpace, position: int, dimension: int) -> gr.Slider:
    use = space.use
    info = None
    if use.measured:
        state = "active" if use.active[dimension] else "inactive"
        info = f"{state}, mean KL {use.mean_kl[dimension]:.2f} nats"
    return gr.Slider(-SLIDER_RANGE, SLIDER_RANGE, value=0.0, step=10 ** -SLIDER_DECIMALS,
                     label=f"z{dimension}", info=info, elem_id=f"slider-{position}",
                     min_width=140, buttons=[])


def check_port_free(host: str, port: int) -> None:
    """Raises InputError (one line) when `port` on `host` cannot be bound as the server binds
    it (SO_REUSEADDR: a server listening there refuses, a closed one's leftovers do not)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        reason = "is in use" if error.errno in (98, 48) else f"cannot be used ({error.strerror})"
        raise InputError(f"--port {port} on {host} {reason}: choose another with --port") \
            from None


def serve(page: gr.Blocks, host: str, port: int) -> str:
    """Starts serving `page` on host:port in the background; returns its address."""
    check_port_free(host, port)
    try:
        _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True,
                                share=False, inbrowser=False, quiet=True, ssr_mode=False,
                                show_error=False, enable_monitoring=False, mcp_server=False,
                                footer_links=[], pwa=False, theme=THEME)
    except OSError as error:  # the port was taken between the check and the start
        raise InputError(f"--port {port} on {host}: {first_line(error)}") from None
    return url
