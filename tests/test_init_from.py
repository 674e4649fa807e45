"""`train.py --init-from SOURCE`: a run that starts from a trained model's weights and
BatchNorm statistics (a run's workdir, a folder of saved variables, `pretrained:NAME`) with
a fresh optimizer, its refusals, and its resume."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import vae_jax
from tests.helpers import (
    NUM_EXAMPLES,
    assert_resumed_bitwise,
    killed_after_saving,
    run_in_process,
    save_untrained,
    tiny_config,
)
from vae_jax import pretrained
from vae_jax.evaluation import elbo
from vae_jax.training import init_from, loop


def first_state(tmp_path, source):
    """The state a run with --init-from `source` starts from, and the run's setup."""
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        setup = loop.RunSetup.create(
            tiny_config(init_from=str(source), data_dir=str(tmp_path / "data")),
            str(tmp_path / "run"))
    return setup, setup.initial_state()


@pytest.mark.parametrize("kind", ["workdir", "saved variables", "pretrained"])
def test_a_run_starts_from_exactly_the_sources_arrays_with_a_fresh_optimizer(
        uninterrupted, tmp_path, kind):
    if kind == "workdir":
        source, expected = uninterrupted, vae_jax.load_variables(str(uninterrupted))
    elif kind == "saved variables":
        source = save_untrained(tmp_path / "saved")
        expected = vae_jax.load_variables(source)
    else:
        source, expected = "pretrained:course", pretrained.load("course")[1]
    setup, state = first_state(tmp_path, source)
    chex.assert_trees_all_equal(jax.device_get(state.variables), expected)
    assert int(state.step) == 0
    chex.assert_trees_all_equal(  # Adam's moments start at zero: nothing of a past run
        jax.tree.leaves(state.opt_state), jax.tree.map(jnp.zeros_like,
                                                       jax.tree.leaves(state.opt_state)))
    np.testing.assert_array_equal(jax.random.key_data(state.key),
                                  jax.random.key_data(setup.keys.train))
    # The run's first test evaluation is the source's, on the same split and key.
    key = jax.random.key(5)
    ours = elbo.neg_elbo(setup.model, state.variables, setup.test_images, key,
                         batch_size=16).averages()
    theirs = elbo.neg_elbo(setup.model, expected, setup.test_images, key,
                           batch_size=16).averages()
    chex.assert_trees_all_equal(ours, theirs)
    assert setup.config_record()["init_from_digest"] == init_from.variables_digest(expected)


def test_config_json_records_where_the_run_started(tmp_path):
    assert run_in_process(tmp_path / "run", "--epochs", "1", "--init-from",
                          "pretrained:course") == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["init_from"] == "pretrained:course"
    assert config["init_from_digest"] == init_from.variables_digest(
        pretrained.load("course")[1])


def damaged_copy(tmp_path):
    copy = tmp_path / "damaged"
    shutil.copytree(pretrained.path("course"), copy)
    record = copy / "variables" / "digests.json"
    digests = json.loads(record.read_text())
    digests[next(iter(digests))] = "0" * 64
    record.write_text(json.dumps(digests))
    return copy


@pytest.mark.parametrize("source, flags, message", [
    ("missing", [], "--init-from {source} does not exist (give a run's workdir, a folder of "
                    "saved variables, or pretrained:NAME)"),
    ("pretrained:nope", [], "--init-from pretrained:nope: no pretrained model 'nope'"),
    ("pretrained:course", ["--z-dim", "8"], "--init-from pretrained:course holds a model with "
                                            "z_dim=32, but the run's --z-dim is 8"),
    ("pretrained:course", ["--hidden-dim", "32"], "holds a model with hidden_dim=16, but the "
                                                  "run's --hidden-dim is 32"),
    ("damaged", [], "--init-from {source}: cannot read variables in "),
    ("own", ["--fresh", "--overwrite"], "--init-from {source} is this run's own --workdir"),
])
def test_a_source_that_cannot_start_the_run_is_one_line_and_nothing_is_written(
        uninterrupted, tmp_path, capsys, source, flags, message):
    workdir = tmp_path / "run"
    if source == "missing":
        source = str(tmp_path / "missing")
    elif source == "damaged":
        source = str(damaged_copy(tmp_path))
    elif source == "own":
        shutil.copytree(uninterrupted, workdir)
        source = str(workdir)
    before = sorted(os.listdir(workdir)) if workdir.exists() else None
    assert run_in_process(workdir, "--init-from", source, *flags) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message.format(source=source) in lines[0], lines
    assert (sorted(os.listdir(workdir)) if workdir.exists() else None) == before


@pytest.mark.slow(reason="three fine-tuning runs, one killed")
def test_a_killed_fine_tuning_run_resumes_bitwise_and_never_rereads_its_source(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(pretrained.path("course"), source)
    flags = ("--init-from", str(source), "--checkpoint-every", "1")
    assert run_in_process(tmp_path / "whole", *flags) == 0
    with killed_after_saving(4):
        run_in_process(tmp_path / "cut", *flags)
    shutil.rmtree(source)  # a resumed run continues from its own checkpoints
    assert run_in_process(tmp_path / "cut", *flags) == 0
    assert_resumed_bitwise(tmp_path / "cut", tmp_path / "whole")
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["init_from_digest"] == init_from.variables_digest(
        pretrained.load("course")[1])
