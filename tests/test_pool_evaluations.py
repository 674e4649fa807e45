"""Pooling evaluate results over parts of a split: equal to evaluating the union at once."""

import json
import warnings

import chex
import numpy as np
import pytest

from vae_jax.commands import pool_evaluations as pool_command
from vae_jax.evaluation import pooling
from vae_jax.model import metrics

PART_SIZES = (7, 1, 12, 30)  # uneven, and one part of a single image


def summarize(neg_elbo, nll, kl_dims, split, seed):
    """What `evaluate --json` reports for these per-image values (the pooled fields)."""
    neg_elbo_mean, neg_elbo_stderr = metrics.mean_and_stderr(neg_elbo)
    nll_mean, nll_stderr = metrics.mean_and_stderr(nll)
    return {
        "neg_elbo": neg_elbo_mean, "neg_elbo_stderr": neg_elbo_stderr,
        "nll_iwae": nll_mean, "nll_iwae_stderr": nll_stderr,
        "reconstruction": float(np.mean(neg_elbo - kl_dims.sum(axis=1))),
        "kl": float(np.mean(kl_dims.sum(axis=1))),
        "kl_per_dim": kl_dims.mean(axis=0).tolist(),
        "active_units": 3, "num_images": len(neg_elbo), "iwae_samples": 5000,
        "binarize": "dynamic", "z_dim": kl_dims.shape[1], "workdir": "/runs/binarized",
        "dataset": "mnist", "split": split, "seed": seed,
        "seconds_iwae": 2.0 * len(neg_elbo), "seconds": 2.5 * len(neg_elbo),
    }


@pytest.fixture(scope="module")
def per_image():
    rng = np.random.default_rng(0)
    total = sum(PART_SIZES)
    kl_dims = rng.gamma(2.0, 0.5, size=(total, 4))
    neg_elbo = rng.normal(95.0, 25.0, size=total) + 10.0 * (np.arange(total) > 20)
    nll = neg_elbo - rng.uniform(5.0, 10.0, size=total)
    return neg_elbo, nll, kl_dims


@pytest.fixture(scope="module")
def parts(per_image):
    bounds = np.cumsum((0,) + PART_SIZES)
    return [summarize(*(values[start:stop] for values in per_image),
                      split=f"test[{start}:{stop}]", seed=index)
            for index, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:]))]


def test_pooled_parts_equal_the_whole(per_image, parts):
    whole = summarize(*per_image, split="test", seed=0)
    pooled = pooling.pool(parts)
    fields = ("neg_elbo", "neg_elbo_stderr", "nll_iwae", "nll_iwae_stderr", "reconstruction",
              "kl", "kl_per_dim", "num_images")
    chex.assert_trees_all_close({key: pooled[key] for key in fields},
                                {key: whole[key] for key in fields}, rtol=1e-12)
    assert pooled["active_units"] is None  # needs all images' E_q[z|x], which parts lack
    assert pooled["splits"] == [part["split"] for part in parts]
    assert pooled["seeds"] == [0, 1, 2, 3]
    assert pooled["seconds_iwae"] == pytest.approx(2.0 * sum(PART_SIZES))
    assert pooled["iwae_decodes_per_sec"] == pytest.approx(5000 / 2.0)


def test_pooled_stderr_grows_with_the_spread_between_parts():
    # Two parts with no spread inside them: all the variance is between them.
    mean, stderr = pooling.pooled_mean_and_stderr([90.0, 100.0], [0.0, 0.0], [5, 5])
    chex.assert_trees_all_close((mean, stderr), metrics.mean_and_stderr([90.0] * 5 + [100.0] * 5))
    assert stderr > 1.0


@pytest.mark.parametrize("change, message", [
    ({"iwae_samples": 50}, "disagree on iwae_samples: 50, 5000"),
    ({"binarize": "none"}, "disagree on binarize"),
    ({"workdir": "/runs/other"}, "disagree on workdir"),
    ({"pretrained": "binarized"}, "disagree on pretrained: None, binarized"),
    ({"split": "test[0:7]"}, "split 'test[0:7]' appears more than once"),
])
def test_parts_that_do_not_belong_together_are_refused(parts, change, message):
    odd = [dict(parts[0]), dict(parts[1], **change)]
    with pytest.raises(pooling.PoolingError, match=message.replace("[", r"\[")):
        pooling.pool(odd)


@pytest.mark.parametrize("field", ["seconds_iwae", "nll_iwae_stderr", "kl_per_dim"])
def test_a_result_without_its_fields_is_refused(parts, field):
    incomplete = {key: value for key, value in parts[1].items() if key != field}
    with pytest.raises(pooling.PoolingError, match=f"result 2 has no '{field}'"):
        pooling.pool([parts[0], incomplete])
    with pytest.raises(pooling.PoolingError, match="no results"):
        pooling.pool([])


def test_command_line_pools_files_and_refuses_bad_ones(parts, tmp_path, capsys):
    paths = []
    for index, part in enumerate(parts):
        paths.append(tmp_path / f"part{index}.json")
        # As evaluate --json writes it: null, not NaN, for one image's standard error.
        paths[-1].write_text(json.dumps({key: None if isinstance(value, float) and np.isnan(value)
                                         else value for key, value in part.items()}))
    assert pool_command.main([str(path) for path in paths] + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(pooling.pool(parts)))

    assert pool_command.main([str(path) for path in paths]) == 0
    summary = capsys.readouterr().out
    assert f"{sum(PART_SIZES)} images" in summary and "NLL bound (IWAE, K=5000)" in summary
    assert "from /runs/binarized" in summary

    pretrained = {"workdir": None, "pretrained": "binarized"}  # evaluate --pretrained's
    for path in paths:
        path.write_text(json.dumps({**json.loads(path.read_text()), **pretrained}))
    assert pool_command.main([str(path) for path in paths]) == 0
    assert "from the pretrained model binarized" in capsys.readouterr().out

    cut_short = tmp_path / "cut_short.json"
    cut_short.write_text("")  # what an evaluation killed before printing leaves behind
    for bad, message in [(cut_short, "cut_short.json is not JSON"),
                         (tmp_path / "missing.json", "cannot read")]:
        assert pool_command.main([str(paths[0]), str(bad)]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1


@pytest.mark.parametrize("field, value, expected", [
    ("num_images", 0, "'num_images' must be a positive integer up to 2,147,483,647, got 0"),
    ("num_images", -50, "'num_images' must be a positive integer up to 2,147,483,647, got -50"),
    ("num_images", True, "'num_images' must be a positive integer up to 2,147,483,647, got True"),
    ("num_images", 10**30, "'num_images' must be a positive integer up to 2,147,483,647"),
    ("num_images", 10**400, "'num_images' must be a positive integer up to 2,147,483,647"),
    ("iwae_samples", "abc", "'iwae_samples' must be a positive integer up to 2,147,483,647"),
    ("iwae_samples", None, "'iwae_samples' must be a positive integer up to 2,147,483,647"),
    ("iwae_samples", 0, "'iwae_samples' must be a positive integer up to 2,147,483,647, got 0"),
    ("iwae_samples", -5, "'iwae_samples' must be a positive integer up to 2,147,483,647"),
    ("iwae_samples", 2.5, "'iwae_samples' must be a positive integer up to 2,147,483,647"),
    ("pretrained", "course\x1b[2J", "'pretrained' must be printable text, got 'course\\x1b[2J'"),
    ("workdir", "/tmp/\x07run", "'workdir' must be printable text"),
    ("neg_elbo", "95.1", "'neg_elbo' must be a finite number, got '95.1'"),
    ("nll_iwae", None, "'nll_iwae' must be a finite number, got None"),
    ("neg_elbo_stderr", -1.0, "'neg_elbo_stderr' must be a non-negative number or null"),
    ("kl_per_dim", [0.5, 0.5], "'kl_per_dim' must be a list of 4 numbers (z_dim), got [0.5, 0.5]"),
    ("kl_per_dim", None, "'kl_per_dim' must be a list of 4 numbers (z_dim), got None"),
    ("kl_per_dim", [1, 2, "x", 4], "'kl_per_dim' must be a list of 4 numbers (z_dim)"),
    ("split", ["test[:10]"], "'split' must be a split such as 'test[:1000]', got ['test[:10]']"),
    ("seconds_iwae", 0, "'seconds_iwae' must be a positive number of seconds, got 0"),
    ("seed", 1.5, "'seed' must be an integer, got 1.5"),
    ("z_dim", "32", "'z_dim' must be a positive integer up to 2,147,483,647, got '32'"),
])
def test_a_field_of_the_wrong_type_or_range_is_one_line_naming_file_and_field(
        parts, tmp_path, capsys, field, value, expected):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(parts[0]))
    bad.write_text(json.dumps({**parts[2], field: value}))
    assert pool_command.main([str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert f"error: {bad}: {expected}" in captured.err


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary",
                                     b'{"neg_elbo": NaN}'])
def test_a_file_that_is_not_json_text_is_one_line(parts, tmp_path, capsys, content):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(parts[0]))
    bad.write_bytes(content)
    with np.errstate(all="raise"):
        assert pool_command.main([str(good), str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{bad} is not a JSON text file" in error


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_values_too_large_to_pool_are_one_line(parts, tmp_path, capsys, flags):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    paths[0].write_text(json.dumps(parts[0]))
    paths[1].write_text(json.dumps({**parts[2], "neg_elbo": 1e308}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning would be a second line
        assert pool_command.main([*map(str, paths), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert "error: the pooled neg_elbo overflows: " in captured.err
