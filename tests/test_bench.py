"""The benchmark's command line: JSON fields, and one-line errors with exit code 2."""

import json
import sys

import numpy as np
import pytest

from tests.helpers import import_torch
from vae_jax.benchmarks import op_profile, runners
from vae_jax.commands import bench as bench_command


def run_bench(capsys, *args):
    """`python -m vae_jax.commands.bench ARGS` in this process: (exit code, stdout, stderr)."""
    status = bench_command.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def json_report(capsys, *args) -> dict:
    """`vae-jax-bench ARGS --json` in this process, which must succeed: its report."""
    status, out, err = run_bench(capsys, *args, "--json")
    assert status == 0, err
    return json.loads(out)


@pytest.mark.slow(reason="times the step against the floor")
def test_json_report_has_the_fields(capsys):
    report = json_report(capsys, "--batch-size", "8", "--steps", "2", "--floor-size", "128")
    assert report["backend"] == "cpu"
    assert report["batch_size"] == 8
    assert report["implementation"] == "auto"
    assert report["resolved_implementation"] == "winograd"
    assert report["timed_steps"] == 2
    for field in ("images_per_sec", "ms_per_step", "ms_per_step_min", "compile_seconds",
                  "peak_memory_bytes"):
        assert isinstance(report[field], (int, float)) and report[field] > 0, field
    assert report["images_per_sec"] == pytest.approx(8e3 / report["ms_per_step"], rel=0.01)
    assert report["peak_memory_kind"] == "host_peak_rss"
    assert not any(key.startswith("torch") for key in report)
    # The floor: XLA's FLOP count of the step against a measured matmul rate.
    assert report["mode"] == "step" and report["matmul_gflops"] > 0
    assert 0.05 < report["gflop_per_step"] < 1.0  # 33.4 GFLOP at batch 1024, 8/1024 of it
    assert report["fraction_of_floor"] == pytest.approx(
        report["gflop_per_step"] / (report["ms_per_step"] / 1e3) / report["matmul_gflops"],
        rel=0.01)
    assert isinstance(report["huge_pages"], bool)


@pytest.mark.slow(reason="times the training step")
def test_default_output_is_a_summary_line(capsys):
    status, out, err = run_bench(capsys, "--batch-size", "4", "--steps", "1", "--warmup", "0",
                                 "--implementation", "xla", "--floor-size", "0")
    assert status == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert "implementation xla (xla)" in lines[0] and "ms/step" in lines[0]


@pytest.mark.parametrize("flags", [["--bogus"], ["--batch-size", "0"], ["--steps", "x"],
                                   ["--implementation", "fast"], ["--platform", "quantum"],
                                   ["--mode", "iwea"], ["--iwae-samples", "0"],
                                   ["--floor-size", "-1"]])
def test_bad_flag_is_one_line_and_exit_code_2(capsys, flags):
    with pytest.raises(SystemExit) as exit_info:
        bench_command.main(flags)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "error" in captured.err


def test_vs_torch_without_torch_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    status, out, err = run_bench(capsys, "--vs-torch")
    assert status == 2
    assert err.strip().splitlines() == [
        "python -m vae_jax.commands.bench: error: --vs-torch needs PyTorch: "
        "pip install torch==2.13.0"]


def test_vs_torch_reports_the_ratio(capsys):
    import_torch()
    status, out, err = run_bench(capsys, "--batch-size", "8", "--steps", "2", "--warmup", "1",
                                 "--json", "--vs-torch", "--floor-size", "0")
    assert status == 0, err
    report = json.loads(out)
    assert report["torch_threads"] == report["threads"]
    assert report["torch_ms_per_step"] > 0
    assert report["speedup_vs_torch"] == pytest.approx(
        report["torch_ms_per_step"] / report["ms_per_step"], rel=0.01)


def test_vs_torch_epoch_times_an_epoch_of_each(capsys):
    import_torch()
    report = json_report(capsys, "--mode", "epoch", "--num-images", "10", "--batch-size", "4",
                         "--steps", "1", "--rounds", "1", "--warmup", "0", "--vs-torch",
                         "--floor-size", "0")
    assert report["torch_images_per_sec"] == pytest.approx(
        10e3 / report["torch_ms_per_step"], rel=0.01)  # the epoch's 10 images, not a batch
    assert report["speedup_vs_torch"] == pytest.approx(
        report["torch_ms_per_step"] / report["ms_per_step"], rel=0.01)


def test_torch_epoch_steps_over_every_image_once_in_shuffled_batches(monkeypatch):
    import_torch()
    images = runners.random_images(10, seed=0)
    runner = runners.TorchRunner(images, batch_size=4, seed=0, threads=1)
    batches = []
    monkeypatch.setattr(runner, "_train", lambda batch: batches.append(batch.numpy()))
    runner.step()
    assert [len(batch) for batch in batches] == [4, 4, 2]
    seen = np.concatenate(batches)
    expected = images.transpose(0, 3, 1, 2)
    assert sorted(map(bytes, seen)) == sorted(map(bytes, expected))  # each image once
    assert not np.array_equal(seen, expected)  # in a shuffled order


@pytest.mark.parametrize("flags, names", [(["--mode", "iwae", "--vs-torch"], "--mode step"),
                                          (["--mode", "epoch", "--breakdown"], "--mode step")])
def test_options_of_training_alone_are_refused_in_other_modes(capsys, flags, names):
    status, out, err = run_bench(capsys, *flags)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and names in err


@pytest.mark.slow(reason="times the IWAE decoder")
def test_iwae_mode_reports_decodes_the_floor_and_the_k5000_projection(capsys):
    report = json_report(capsys, "--mode", "iwae", "--batch-size", "4", "--iwae-samples", "6",
                         "--steps", "2", "--warmup", "1", "--floor-size", "128")
    assert report["mode"] == "iwae" and report["batch_size"] == 4
    assert report["iwae_samples"] == 6 and report["iwae_chunk"] == 6  # evaluate's chunking
    assert report["decodes_per_sec"] == pytest.approx(4 * 6 / report["ms_per_step"] * 1e3,
                                                      rel=0.01)
    # The decoder's forward pass is 15.2 MFLOP an image, 10.3 with Winograd's deconv2, which
    # "auto" takes on CPU (docs/guides/performance.md).
    assert report["resolved_implementation"] == "winograd"
    assert report["gflop_per_step"] / 24 == pytest.approx(0.0103, rel=0.1)
    assert 0 < report["fraction_of_floor"]
    assert report["projected_minutes_k5000_test_set"] == pytest.approx(
        5e7 / report["decodes_per_sec"] / 60, rel=0.01)
    assert report["peak_memory_bytes"] > 0


@pytest.mark.slow(reason="compiles and times the scan epoch")
def test_epoch_mode_times_the_scan_epoch_over_synthetic_images(capsys):
    report = json_report(capsys, "--mode", "epoch", "--num-images", "48", "--batch-size", "16",
                         "--steps", "1", "--warmup", "0", "--floor-size", "0")
    assert report["mode"] == "epoch" and report["num_images"] == 48
    assert report["images_per_sec"] == pytest.approx(48 / report["ms_per_step"] * 1e3, rel=0.01)
    assert "matmul_gflops" not in report  # --floor-size 0


@pytest.mark.slow(reason="profiles a compiled step")
def test_breakdown_names_the_layers_and_passes(capsys):
    # Batch 64: at 8, encoder/conv1's passes took about 0.05 ms, where the table stops.
    status, out, err = run_bench(capsys, "--batch-size", "64", "--steps", "1", "--warmup", "1",
                                 "--breakdown", "--floor-size", "0")
    assert status == 0, err
    text = out.splitlines()
    assert text[0].startswith("step: cpu") and "where a" in text[1]
    layers = {tuple(line.split()[:2]) for line in text[2:] if line.startswith("    ")}
    for layer in ("decoder/deconv2", "decoder/deconv3", "encoder/conv1"):
        assert (layer, "forward") in layers and (layer, "backward") in layers, layer
    assert any(line.strip().startswith("decoder/deconv2") and "dot_general" in line
               for line in text)


def test_op_profile_classifies_jax_op_names():
    classify = op_profile.classify
    assert classify("jit(step)/transpose(jvp(VAE))/VAE.decode/decoder/deconv2/dot_general") == (
        "decoder/deconv2", "backward", "dot_general")
    assert classify("jit(step)/jvp(VAE)/VAE.encode/encoder/bn1/mul") == (
        "encoder/bn1", "forward", "mul")
    assert classify("jit(step)/jvp(VAE)/VAE.decode/decoder/jit(relu)/max") == (
        "decoder/other", "forward", "max")
    assert classify("jit(step)/jvp(jit(softplus))/log1p") == (
        "loss and optimizer", "forward", "log1p")


@pytest.mark.slow(reason="times an importance-weighted training step")
def test_the_step_of_an_objective_is_timed_and_reported(capsys):
    report = json_report(capsys, "--batch-size", "4", "--steps", "1", "--warmup", "0",
                         "--floor-size", "0", "--objective", "dreg", "--objective-samples", "3")
    assert (report["objective"], report["objective_samples"]) == ("dreg", 3)
    elbo = json_report(capsys, "--batch-size", "4", "--steps", "1", "--warmup", "0",
                       "--floor-size", "0")
    assert (elbo["objective"], elbo["objective_samples"]) == ("elbo", 1)
    # Three decoder passes and DReG's second pullback: XLA counts far more work.
    assert report["gflop_per_step"] > 2 * elbo["gflop_per_step"]


@pytest.mark.parametrize("flags, message", [
    (["--mode", "iwae", "--objective", "iwae", "--objective-samples", "2"],
     "--objective times training"),
    (["--objective", "dreg", "--objective-samples", "2", "--vs-torch"],
     "--vs-torch times the course's ELBO step"),
    (["--objective-samples", "3"], "the ELBO objective takes one sample"),
])
def test_bad_objective_flags_are_one_line(capsys, flags, message):
    status, out, err = run_bench(capsys, *flags)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
