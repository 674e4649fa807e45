"""The learning-rate schedule (vae_jax.training.schedules): its values, its settings, the
steps it drives, and a scheduled run that resumes exactly."""

import json
import math
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.helpers import full_state, run_in_process, snapshot
from vae_jax import VAE
from vae_jax.runtime.errors import InputError
from vae_jax.training import schedules, steps, train_state
from vae_jax.training.config import TrainConfig

PEAK = 2e-3


def values(schedule, steps_):
    return [schedules.value_at(schedule, step) for step in steps_]


def test_the_course_rate_is_the_number_itself():
    # A float, not a schedule: optax.adam then keeps the course's state, step for step.
    assert schedules.learning_rate_schedule(PEAK) == PEAK
    assert TrainConfig().learning_rate_schedule(steps_per_epoch=59) == PEAK
    course, scheduled = (train_state.make_optimizer(rate).init({"w": jnp.zeros(2)})
                         for rate in (PEAK, optax.constant_schedule(PEAK)))
    assert jax.tree.structure(course) != jax.tree.structure(scheduled)


def test_a_warm_up_rises_linearly_from_zero_then_holds():
    schedule = schedules.learning_rate_schedule(PEAK, warmup_steps=4)
    np.testing.assert_allclose(values(schedule, range(7)),
                               [0, PEAK / 4, PEAK / 2, 3 * PEAK / 4, PEAK, PEAK, PEAK], rtol=1e-6)


def test_cosine_decays_to_the_end_fraction_after_the_warm_up_and_holds_it():
    schedule = schedules.learning_rate_schedule(PEAK, "cosine", warmup_steps=2, decay_steps=12,
                                                end_fraction=0.1)
    end = 0.1 * PEAK
    expected = [0, PEAK / 2, PEAK, *(end + (PEAK - end) * (1 + math.cos(math.pi * t / 10)) / 2
                                     for t in range(1, 11)), end, end]
    np.testing.assert_allclose(values(schedule, range(15)), expected, rtol=1e-5)


def test_exponential_decays_geometrically_to_the_end_fraction_and_holds_it():
    schedule = schedules.learning_rate_schedule(PEAK, "exponential", decay_steps=8,
                                                end_fraction=0.01)
    np.testing.assert_allclose(values(schedule, [0, 2, 4, 8, 20]),
                               [PEAK, PEAK * 0.01 ** 0.25, PEAK * 0.1, PEAK * 0.01,
                                PEAK * 0.01], rtol=1e-5)


def test_a_decay_that_ends_before_its_warm_up_is_refused():
    with pytest.raises(ValueError, match="decay_steps 4 > warmup_steps 4"):
        schedules.learning_rate_schedule(PEAK, "cosine", warmup_steps=4, decay_steps=4)


def test_the_run_counts_epochs_in_steps_and_decays_by_the_last_epoch():
    config = TrainConfig(epochs=5, lr_schedule="cosine", lr_warmup_epochs=1, lr_end_fraction=0.5)
    assert config.lr_decay_end() == 5
    schedule = config.learning_rate_schedule(steps_per_epoch=3)
    np.testing.assert_allclose(values(schedule, [0, 3, 15, 30]),
                               [0, PEAK, PEAK / 2, PEAK / 2], rtol=1e-6)
    assert TrainConfig(epochs=5, lr_schedule="cosine", lr_decay_epochs=3).lr_decay_end() == 3


@pytest.mark.parametrize("settings, message", [
    (dict(lr_decay_epochs=5), "lr_decay_epochs 5 needs lr_schedule cosine or exponential"),
    (dict(lr_end_fraction=0.5), "lr_end_fraction 0.5 needs lr_schedule cosine or"),
    (dict(lr_schedule="cosine", lr_end_fraction=2.0), "lr_end_fraction must be at most 1"),
    (dict(lr_schedule="cosine", lr_end_fraction=0.0), "lr_end_fraction must be positive"),
    (dict(lr_schedule="cosine", epochs=3, lr_warmup_epochs=3),
     "the cosine decay ends at epoch 3, not after the 3 epochs of warm-up"),
    (dict(lr_schedule="step"), "lr_schedule must be one of constant, cosine, exponential"),
    (dict(lr_warmup_epochs=-1), "lr_warmup_epochs must be a finite number >= 0"),
])
def test_bad_schedule_settings_are_refused(settings, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**settings)


def test_a_resume_must_keep_the_schedule():
    saved = TrainConfig(lr_schedule="cosine", lr_decay_epochs=10).to_json()
    TrainConfig(epochs=20, lr_schedule="cosine", lr_decay_epochs=10).check_resumable(saved, "a")
    for other, flag in ((dict(lr_schedule="exponential", lr_decay_epochs=10), "--lr-schedule"),
                        (dict(lr_schedule="cosine", lr_decay_epochs=20), "--lr-decay-epochs"),
                        (dict(lr_schedule="cosine", lr_decay_epochs=10, lr_warmup_epochs=1),
                         "--lr-warmup-epochs")):
        with pytest.raises(InputError, match=f"^{flag} "):
            TrainConfig(**other).check_resumable(saved, "a")
    old = TrainConfig().to_json()
    for name in ("lr_schedule", "lr_warmup_epochs", "lr_decay_epochs", "lr_end_fraction"):
        del old[name]  # a run saved before the schedule existed trained at a constant rate
    TrainConfig().check_resumable(old, "a")


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))


def one_step(rate, images):
    keys = train_state.RunKeys.from_seed(0)
    state = train_state.create_train_state(VAE(), train_state.make_optimizer(rate),
                                           keys.init, keys.train)
    return state, jax.jit(steps.train_step)(state, images)[0]


def test_adam_steps_at_the_schedules_rate(images):
    course_start, course = one_step(PEAK, images)
    _, cosine = one_step(schedules.learning_rate_schedule(PEAK, "cosine", decay_steps=10),
                         images)
    chex.assert_trees_all_close(cosine.params, course.params, rtol=1e-6, atol=1e-9)
    start, warming = one_step(schedules.learning_rate_schedule(PEAK, warmup_steps=2), images)
    chex.assert_trees_all_equal(warming.params, start.params)  # step 0 of a warm-up: rate 0
    chex.assert_trees_all_equal(warming.batch_stats, course.batch_stats)
    assert not np.allclose(course.params["encoder"]["conv1"]["kernel"],
                           course_start.params["encoder"]["conv1"]["kernel"])


COSINE = ["--lr-schedule", "cosine", "--lr-warmup-epochs", "1", "--lr-end-fraction", "0.1"]


@pytest.mark.slow(reason="three short training runs")
def test_a_scheduled_run_records_its_rate_and_resumes_exactly(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_in_process(straight, *COSINE) == 0  # 3 epochs of 3 steps
    records = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    expected = schedules.learning_rate_schedule(PEAK, "cosine", warmup_steps=3, decay_steps=9,
                                                end_fraction=0.1)
    np.testing.assert_allclose([r["learning_rate"] for r in records],
                               values(expected, [2, 5, 8]), rtol=1e-6)
    assert json.load(open(straight / "config.json"))["lr_decay_epochs"] == 3

    # Two epochs of a run whose decay ends at epoch 3, then the third: the same state.
    assert run_in_process(resumed, *COSINE, "--epochs", "2", "--lr-decay-epochs", "3") == 0
    assert run_in_process(resumed, *COSINE, "--lr-decay-epochs", "3") == 0
    chex.assert_trees_all_equal(full_state(resumed), full_state(straight))

    # Past the decay's end: refused unless the end is given again, then held at the end.
    before = snapshot(resumed)
    capsys.readouterr()
    assert run_in_process(resumed, *COSINE, "--epochs", "4") == 2
    assert "--lr-decay-epochs 4 differs from 3 of the run saved" in capsys.readouterr().err
    assert snapshot(resumed) == before
    shutil.rmtree(straight)
    assert run_in_process(resumed, *COSINE, "--epochs", "4", "--lr-decay-epochs", "3") == 0
    last = json.loads(open(resumed / "metrics.jsonl").readlines()[-1])
    assert last["epoch"] == 4 and last["learning_rate"] == pytest.approx(0.1 * PEAK)
