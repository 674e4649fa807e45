"""What the explorer's fields accept. The page's events hand their values over as sent
(`preprocess=False`), from the widgets or from a crafted API call alike, and these checks
turn each bad one into an InputError naming the field: one warning on the page, the views
unchanged, nothing in the terminal.
"""

from __future__ import annotations

import math
import numbers

from vae_jax.explore.latent_space import SLIDER_RANGE
from vae_jax.runtime.errors import InputError


def _shown(value) -> str:
    """`value` as a message shows it: short, and no control characters."""
    text = repr(value) if isinstance(value, str) else str(value)
    text = "".join(character if character.isprintable() else "?" for character in text)
    return text if len(text) <= 40 else text[:37] + "..."


def whole_number(value, low: int, high: int, what: str) -> int:
    """`value` as an int in [low, high]; InputError naming `what` otherwise (a fraction is
    refused, never rounded)."""
    whole = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        whole = int(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        whole = int(value)
    if whole is None or not low <= whole <= high:
        raise InputError(f"{what} is a whole number from {low} to {high}, got {_shown(value)}")
    return whole


def latent_values(values, names: list[str]) -> list[float]:
    """The sliders' values as floats in [-SLIDER_RANGE, SLIDER_RANGE]; InputError naming the
    first bad one's latent (`names`, in the sliders' order) otherwise."""
    if len(values) != len(names):
        raise InputError(f"the page has {len(names)} latent sliders, got {len(values)} values")
    checked = []
    for name, value in zip(names, values):
        if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                or not -SLIDER_RANGE <= value <= SLIDER_RANGE):
            raise InputError(f"the {name} slider takes a value from {-SLIDER_RANGE:g} to "
                             f"{SLIDER_RANGE:g}, got {_shown(value)}")
        checked.append(float(value))
    return checked
