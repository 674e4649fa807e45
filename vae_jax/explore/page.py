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

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio reads it: no telemetry

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from vae_jax.explore import address, drawing, figures, inputs  # noqa: E402
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


class _ExplorerBlocks(gr.Blocks):
    """gr.Blocks whose malformed requests, the ones gradio's own checks refuse before any view
    runs (too few values, a drawing that is not one), are one error line for the caller and
    nothing in the terminal: only a crafted API call sends them."""

    async def preprocess_data(self, *args, **kwargs):
        try:
            return await super().preprocess_data(*args, **kwargs)
        except Exception as error:
            raise gr.Error(f"the request is not one the page sends: {first_line(error)}",
                           print_exception=False) from None


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
        return self.images[inputs.whole_number(index, 0, self.count - 1, "a test image")]

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
        values = inputs.latent_values(values, [f"z{dimension}" for dimension in self.order])
        return figures.enlarge(self.space.decode(latent_from_sliders(values, self.order)[None])[0])

    def back_to_means(self, mean) -> list:
        mean = np.asarray(mean)
        return ([figures.enlarge(self.space.decode(mean[None])[0])]
                + slider_values(mean, self.order))

    def walk(self, start, end) -> np.ndarray:
        return figures.strip(self.space.walk(self.test_image(start), self.test_image(end)))

    def samples(self, value) -> np.ndarray:
        return figures.grid(self.space.samples(inputs.whole_number(value, 0, MAX_SEED, "a seed")))


def build_page(space: LatentSpace, run_name: str, note: str | None = None) -> gr.Blocks:
    """The page for `space`; `run_name` heads it, `note` says why there are no test images."""
    views = Views(space, note)
    with _ExplorerBlocks(title=f"vae-jax explorer: {run_name}", analytics_enabled=False) as page:
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
                index = _whole_number_field(0, f"or a test image (0 to {max(count - 1, 0)})",
                                            "test-index", interactive=count > 0)
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
                                 len(encoded)), canvas, encoded, api_name="encode_drawing")
    encode_index = on_page(lambda i: views.encoded(views.test_image(i)), len(encoded))
    encode_test.click(encode_index, index, encoded, preprocess=False, api_name="encode_test_image")
    index.submit(encode_index, index, encoded, preprocess=False, api_visibility="private")
    for position, slider in enumerate(sliders):  # the API shows one "decode"
        slider.input(on_page(views.decoded), sliders, decoded, trigger_mode="always_last",
                     show_progress="hidden", preprocess=False,
                     api_name="decode" if position == 0 else None,
                     api_visibility="public" if position == 0 else "private")
    reset.click(views.back_to_means, posterior_mean, [decoded, *sliders],
                api_visibility="private")
    return encoded


def _walk_tab(views: Views) -> None:
    """The decoder along a line in z between two test images."""
    gr.Markdown(f"The decoder along the straight line in z from one test image's posterior "
                f"mean to another's, in {WALK_STEPS} steps.")
    with gr.Row():
        walk_from = _whole_number_field(0, "from test image", "walk-from")
        walk_to = _whole_number_field(1, "to test image", "walk-to")
        walk_button = gr.Button("Walk", variant="primary", elem_id="walk")
    walk_strip = _picture("The walk", "walk-strip")
    walk_button.click(on_page(views.walk), [walk_from, walk_to], walk_strip, preprocess=False,
                      api_name="walk")


def _sample_tab(views: Views) -> gr.Image:
    """Prior samples for a seed; returns the grid's component."""
    gr.Markdown("z ~ N(0, I) decoded: what the model makes up. The same seed gives the same "
                "grid as `vae-jax-sample --num 64 --seed SEED`.")
    with gr.Row():
        seed = _whole_number_field(0, f"seed (0 to {MAX_SEED})", "seed")
        sample_button = gr.Button("Sample", variant="primary", elem_id="sample")
    sample_grid = _picture("64 samples from the prior", "sample-grid")
    sample_button.click(on_page(views.samples), seed, sample_grid, preprocess=False,
                        api_name="sample")
    return sample_grid


def _whole_number_field(value: int, label: str, element_id: str,
                        interactive: bool = True) -> gr.Number:
    """A field for a whole number. No bounds and no rounding: its events pass the value on as
    typed (`preprocess=False`) and the view refuses a bad one with the page's warning, where
    gradio's own checks would mark every output as failed and print a traceback."""
    return gr.Number(value, label=label, precision=None, step=1, interactive=interactive,
                     elem_id=element_id)


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


def serve(page: gr.Blocks, host: str, port: int) -> str:
    """Starts serving `page` on host:port in the background; returns its address."""
    address.check_address(host, port)
    try:
        page.launch(server_name=host, server_port=port, prevent_thread_lock=True, share=False,
                    inbrowser=False, quiet=True, ssr_mode=False, show_error=False,
                    enable_monitoring=False, mcp_server=False, footer_links=[], pwa=False,
                    theme=THEME)
    except OSError as error:  # the port was taken between the check and the start
        raise InputError(f"--port {port} on {host}: {first_line(error)}") from None
    return address.page_url(host, port)
