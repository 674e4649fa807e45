"""The exercises' checks: every reference solution passes, every mistake a learner makes is
named by its hint (one test per hint, each a mutated solution), and a check never raises
for a wrong answer."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import exercises
from vae_jax.exercises import solutions
from vae_jax.exercises.answers import NOT_IMPLEMENTED

COURSE_ORDER = ("split", "reparameterize", "kl", "reconstruction", "loss", "train_step",
                "sample", "iwae")


def test_the_exercises_come_in_the_courses_order():
    assert exercises.names() == COURSE_ORDER


@pytest.mark.parametrize("name", [name for name in COURSE_ORDER if name != "train_step"])
def test_each_reference_solution_passes_its_check(name):
    result = exercises.check(name, getattr(solutions, name))
    assert result.passed, result.hint
    assert result.hint == ""


def test_the_reference_train_step_passes_its_check():
    result = exercises.check("train_step", solutions.train_step)
    assert result.passed, result.hint


@pytest.mark.parametrize("name", COURSE_ORDER)
def test_a_blank_exercise_says_not_implemented_yet(name):
    def blank(*args):
        raise NotImplementedError
    result = exercises.check(name, blank)
    assert not result.passed and result.hint == NOT_IMPLEMENTED
    assert "not implemented yet" in str(result)


def test_the_solution_is_the_reference_source():
    source = exercises.solution("kl")
    assert source.startswith("def kl(mean, stddev):")
    assert source == inspect.getsource(solutions.kl)
    namespace = {"jnp": jnp, "jax": jax}
    exec(source, namespace)  # noqa: S102 - the solution a learner would paste runs as shown
    assert exercises.check("kl", namespace["kl"]).passed


def test_an_unknown_exercise_is_a_value_error_naming_the_known_ones():
    with pytest.raises(ValueError, match="no exercise called 'kll'; the exercises are split"):
        exercises.check("kll", solutions.kl)
    with pytest.raises(ValueError, match="no exercise called"):
        exercises.solution("kll")


def test_the_verdict_is_one_line_in_text_and_in_a_notebook():
    passed = exercises.check("kl", solutions.kl)
    failed = exercises.check("kl", lambda mean, stddev: -solutions.kl(mean, stddev))
    assert str(passed) == repr(passed) == "✓ kl: passed"
    assert str(failed).startswith("✗ kl: the sign is flipped")
    assert "\n" not in str(failed)
    assert "the sign is flipped" in failed._repr_html_()
    assert failed.as_dict() == {"name": "kl", "passed": False, "hint": failed.hint}


# A check never raises for a wrong answer: what the function does becomes the hint.

@pytest.mark.parametrize("name", COURSE_ORDER)
def test_a_function_that_raises_passes_nothing_and_gets_a_hint(name):
    def raises(*args):
        raise ValueError("my mistake")
    result = exercises.check(name, raises)
    assert not result.passed
    assert "raised ValueError (my mistake)" in result.hint


@pytest.mark.parametrize("name", COURSE_ORDER)
def test_a_function_with_a_wrong_result_type_passes_nothing(name):
    result = exercises.check(name, lambda *args: "a string")
    assert not result.passed and result.hint


@pytest.mark.parametrize("name, wrong, hint", [
    ("kl", lambda mean, stddev: jnp.zeros((1, 1)), "has shape (1, 1) where (3,)"),
    ("reconstruction", lambda logits, images: jnp.zeros(()), "one number for the whole batch"),
    ("iwae", lambda log_weights: jnp.zeros(log_weights.shape[1] + 1), "has shape (4,) where"),
])
def test_a_wrong_shape_passes_nothing_and_says_which(name, wrong, hint):
    result = exercises.check(name, wrong)
    assert not result.passed and hint in result.hint


@pytest.mark.parametrize("name, nan", [
    ("kl", lambda mean, stddev: jnp.full(mean.shape[:1], jnp.nan)),
    ("loss", lambda logits, images, mean, stddev: jnp.array(jnp.nan)),
    ("iwae", lambda log_weights: jnp.full(log_weights.shape[1:], jnp.nan)),
])
def test_a_nan_passes_nothing_and_gets_a_hint(name, nan):
    result = exercises.check(name, nan)
    assert not result.passed and "NaN" in result.hint


def test_something_that_is_not_a_function_gets_a_hint():
    result = exercises.check("kl", None)
    assert not result.passed and "should be a function, got NoneType" in result.hint


def test_a_function_that_cannot_be_jitted_is_told_why():
    def python_if(mean, stddev):
        if float(mean.sum()) > 1e9:  # a Python `if` on an array's value
            return mean
        return solutions.kl(mean, stddev)
    result = exercises.check("kl", python_if)
    assert not result.passed and "not under jax.jit" in result.hint


# One mutated solution per mistake: each hint names its mistake.

def _split_at(encoding):
    return encoding.shape[-1] // 2


def _bce_through_probabilities(logits, images):
    p = jax.nn.sigmoid(logits)
    per_pixel = -(images * jnp.log(p) + (1 - images) * jnp.log(1 - p))
    return per_pixel.reshape(len(logits), -1).sum(-1)


def _bce_clamped(logits, images):
    p = jax.nn.sigmoid(logits)
    log_p, log_1mp = jnp.maximum(jnp.log(p), -100), jnp.maximum(jnp.log(1 - p), -100)
    return -(images * log_p + (1 - images) * log_1mp).reshape(len(logits), -1).sum(-1)


def _twice_the_same_noise(key, mean, stddev):
    half = mean.shape[1] // 2
    eps = jax.random.normal(key, (mean.shape[0], half))
    return mean + stddev * jnp.concatenate([eps, eps], axis=1)


MISTAKES = [
    ("split", lambda e: (e[:, :_split_at(e)], jnp.exp(e[:, _split_at(e):] / 2)),
     "reads the second half as log(variance)"),
    ("split", lambda e: (e[:, :_split_at(e)], e[:, _split_at(e):]), "take jnp.exp of it"),
    ("split", lambda e: (e[:, _split_at(e):], jnp.exp(e[:, :_split_at(e)])),
     "the halves are swapped"),
    ("split", lambda e: (e, jnp.exp(e)), "has all 4 numbers of each row"),
    ("reparameterize", lambda key, m, s: solutions.reparameterize(jax.random.key(0), m, s),
     "the key is ignored"),
    ("reparameterize",
     lambda key, m, s: m + s * np.random.default_rng().standard_normal(m.shape, np.float32),
     "the same key gave a different z"),
    ("reparameterize", lambda key, m, s: m + s * jax.random.normal(key, m.shape[1:]),
     "every image got the same noise"),
    ("reparameterize", _twice_the_same_noise, "the same noise appears twice"),
    ("reparameterize", lambda key, m, s: m + s * jax.random.uniform(key, m.shape),
     "looks uniform"),
    ("reparameterize", lambda key, m, s: m + s**2 * jax.random.normal(key, m.shape),
     "the variance"),
    ("reparameterize", lambda key, m, s: m + jnp.exp(s / 2) * jax.random.normal(key, m.shape),
     "read as a log-variance"),
    ("reparameterize",
     lambda key, m, s: jax.lax.stop_gradient(m) + s * jax.random.normal(key, m.shape),
     "gradient of z with respect to mean is not 1"),
    ("kl", lambda m, s: -solutions.kl(m, s), "the sign is flipped"),
    ("kl", lambda m, s: solutions.kl(m, s) / m.shape[1], "averages over the latent dimensions"),
    ("kl", lambda m, s: -0.5 * jnp.sum(1 + s - m**2 - jnp.exp(s), axis=-1),
     "written for a log-variance"),
    ("kl", lambda m, s: 0.5 * jnp.sum(m**2 + s - jnp.log(s) - 1, axis=-1),
     "reads stddev as the variance"),
    ("kl", lambda m, s: 0.5 * (m**2 + s**2) - jnp.log(s) - 0.5, "the KL of each latent dimension"),
    ("kl", lambda m, s: solutions.kl(m, s).sum(), "one number for the whole batch"),
    ("reconstruction", _bce_through_probabilities, "overflows for large logits"),
    ("reconstruction", _bce_clamped, "a clamp, such as PyTorch's"),
    ("reconstruction", lambda l, x: solutions.reconstruction(l, x) / 784,
     "averages over the pixels"),
    ("reconstruction",
     lambda l, x: ((jax.nn.sigmoid(l) - x) ** 2).reshape(len(l), -1).sum(-1), "squared error"),
    ("reconstruction", lambda l, x: -solutions.reconstruction(l, x), "the sign is flipped"),
    ("loss", lambda l, x, m, s: solutions.loss(l, x, m, s) / len(l),
     "averages over the images where the course sums"),
    ("loss", lambda l, x, m, s: solutions.reconstruction(l, x).sum(), "the KL term is missing"),
    ("loss", lambda l, x, m, s: (solutions.reconstruction(l, x) - solutions.kl(m, s)).sum(),
     "the KL is subtracted"),
    ("loss", lambda l, x, m, s: solutions.reconstruction(l, x) + solutions.kl(m, s),
     "one value per image"),
    ("sample", lambda key, decode, num, z: decode(jax.random.normal(key, (num, z))),
     "apply jax.nn.sigmoid"),
    ("sample", lambda key, decode, num, z: jax.nn.sigmoid(decode(
        jax.random.uniform(key, (num, z)))), "must come from the prior N(0, I)"),
    ("sample", lambda key, decode, num, z: solutions.sample(jax.random.key(3), decode, num, z),
     "the key is ignored"),
    ("sample", lambda key, decode, num, z: jax.nn.sigmoid(decode(
        jnp.tile(jax.random.normal(key, (1, z)), (num, 1)))), "every image decodes the same z"),
    ("iwae", lambda w: jnp.log(jnp.mean(jnp.exp(w), axis=0)), "the log-sum-exp trick"),
    ("iwae", lambda w: w.mean(axis=0), "the ELBO's estimate"),
    ("iwae", lambda w: jax.nn.logsumexp(w, axis=0), "the 1/K is missing"),
    ("iwae", lambda w: w.max(axis=0), "the largest log-weight is not the bound"),
    ("iwae", lambda w: solutions.iwae(w.T), "the wrong axis"),
]


@pytest.mark.parametrize("name, mutated, hint", MISTAKES,
                         ids=[f"{name}-{hint[:30]}" for name, _, hint in MISTAKES])
def test_each_mistake_gets_its_hint(name, mutated, hint):
    result = exercises.check(name, mutated)
    assert not result.passed
    assert hint in result.hint, result.hint
    assert result.hint.count(". ") == 0, "a hint is one sentence"


# train_step: each mistake a variation of the reference step.

def _step(state, images, *, sample_with="part", keep="other", train=True, update_stats=True,
          parts=2, returned="sum", optimizer="adam"):
    keys = jax.random.split(state.key, parts)
    sample_key = state.key if sample_with == "state" else keys[-1]
    kept = {"other": keys[0], "state": state.key, "sample": sample_key}[keep]

    def loss_fn(params):
        (logits, mean, stddev), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, sample_key,
            train=train, mutable=["batch_stats"])
        return solutions.loss(logits, images, mean, stddev), updates["batch_stats"]

    (value, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if not update_stats:
        batch_stats = state.batch_stats
    if optimizer == "sgd":
        params = jax.tree.map(lambda p, g: p - 2e-3 * g, state.params, grads)
        state = state.replace(params=params, batch_stats=batch_stats, key=kept,
                              step=state.step + 1)
    else:
        state = state.apply_gradients(grads=grads, batch_stats=batch_stats, key=kept)
    return state, value / images.shape[0] if returned == "mean" else value


def test_a_step_that_splits_its_key_in_three_and_samples_with_the_last_passes():
    result = exercises.check("train_step", lambda s, x: _step(s, x, parts=3))
    assert result.passed, result.hint


TRAIN_STEP_MISTAKES = [
    (dict(update_stats=False), "BatchNorm's running statistics were not updated"),
    (dict(sample_with="state", keep="state"), "the state's key was not split"),
]
SLOW_TRAIN_STEP_MISTAKES = [
    (dict(sample_with="state"), "drawn with state.key itself"),
    (dict(keep="sample"), "the one this step drew its noise with"),
    (dict(train=False), "evaluation mode"),
    (dict(returned="mean"), "averaged over the images"),
    (dict(optimizer="sgd"), "differ from one Adam step"),
]


@pytest.mark.parametrize("mistake, hint", TRAIN_STEP_MISTAKES + [
    pytest.param(*case, marks=pytest.mark.slow(reason="one train-step check each"))
    for case in SLOW_TRAIN_STEP_MISTAKES], ids=lambda value: str(value)[:40])
def test_each_train_step_mistake_gets_its_hint(mistake, hint):
    result = exercises.check("train_step", lambda s, x: _step(s, x, **mistake))
    assert not result.passed
    assert hint in result.hint, result.hint


@pytest.mark.slow(reason="one train-step check")
def test_a_train_step_that_cannot_be_jitted_is_told_why():
    def step(state, images):
        state, value = _step(state, images)
        print(f"loss {float(value):.1f}")  # float() of a traced value
        return state, value
    result = exercises.check("train_step", step)
    assert not result.passed and "not under jax.jit" in result.hint, result.hint
