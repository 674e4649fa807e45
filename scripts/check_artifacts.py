"""Checks the release artifacts: the sdist and the wheel that `python -m build` makes.

    python scripts/check_artifacts.py copy . /tmp/clean          # the files git would clone
    python scripts/check_artifacts.py contents dist/vae_jax-*.whl dist/vae_jax-*.tar.gz
    python scripts/check_artifacts.py smoke --data-dir DIR   # in the wheel's venv, elsewhere

`copy`: the repository's files as a clone would have them (tracked, and untracked but not
ignored), without what an editable install leaves behind: a stale `vae_jax.egg-info` would
feed its old file list to the build and hide a model missing from the package data.
`contents`: the wheel holds the package, its pretrained models (every file of each) and
its metadata, nothing else; the sdist holds what a build and the test suite need (the
package, tests, docs sources, notebooks, scripts) and no build outputs or runs.
`smoke`, run by the Python of a virtual environment with the wheel installed, from a folder
outside the repository: `import vae_jax` from that environment with the metadata's
version, an arrays file from `vae-jax-export-data` (the prepared MNIST in --data-dir, else
tfds's mock data), one tiny `vae-jax-train` epoch on it, `vae-jax-evaluate` and
`vae-jax-sample` on that run and on a pretrained model, and every pretrained model loaded
with its digests verified. `scripts/check_artifacts.sh` runs both, as `.ci/run` does.
Exits 1 with the reasons when a check fails.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

PACKAGE = "vae_jax"
# Each shipped model's folder holds these (its variables' arrays and digests besides).
MODEL_FILES = ("config.json", "model_card.json")
SDIST_NEEDS = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in",
               "train.py", "tests/conftest.py", "docs/conf.py", "docs/index.md",
               "notebooks/vae_course_in_jax.ipynb", "notebooks/exercises.ipynb",
               "scripts/check_artifacts.py", ".ci/run")
SDIST_REFUSES = ("docs/_build/*", "runs/*", "*/__pycache__/*", "*.pyc", ".venv/*",
                 ".ci-venv/*", "build/*", "dist/*")


def clean_copy(repository: str, destination: str) -> int:
    """Copies the files git would clone (with the working tree's changes) from
    `repository` to `destination`; returns how many."""
    listed = subprocess.run(["git", "-C", repository, "ls-files", "-z", "--cached",
                             "--others", "--exclude-standard"], capture_output=True,
                            check=True).stdout.decode().split("\0")
    count = 0
    for name in filter(None, listed):
        source = os.path.join(repository, name)
        if not os.path.lexists(source):  # deleted in the working tree
            continue
        target = os.path.join(destination, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
        count += 1
    return count


def wheel_problems(names: list[str], models: list[str]) -> list[str]:
    """What is wrong with a wheel holding `names`, given the shipped `models`' names."""
    problems = [f"the wheel holds {name}, which is neither the package nor its metadata"
                for name in names
                if not (name.startswith(f"{PACKAGE}/") or ".dist-info/" in name)]
    for model in models:
        folder = f"{PACKAGE}/pretrained/{model}/"
        for required in MODEL_FILES:
            if folder + required not in names:
                problems.append(f"the wheel lacks the pretrained model {model}'s {required}")
        if not any(name.startswith(folder + "variables/") for name in names):
            problems.append(f"the wheel lacks the pretrained model {model}'s variables")
    if not any(name.endswith(".dist-info/licenses/LICENSE") for name in names):
        problems.append("the wheel lacks the license file")
    return problems


def sdist_problems(names: list[str]) -> list[str]:
    """What is wrong with an sdist holding `names` (relative to its top folder)."""
    problems = [f"the sdist lacks {needed}" for needed in SDIST_NEEDS if needed not in names]
    problems += [f"the sdist holds {name}, a build output or a run" for name in names
                 if any(fnmatch.fnmatch(name, pattern) for pattern in SDIST_REFUSES)]
    return problems


def shipped_models(sdist_names: list[str]) -> list[str]:
    """The pretrained models' names, from the folders with a model card in the sdist."""
    suffix = "/model_card.json"
    return sorted(name[len(f"{PACKAGE}/pretrained/"):-len(suffix)] for name in sdist_names
                  if name.startswith(f"{PACKAGE}/pretrained/") and name.endswith(suffix))


def check_contents(wheel: str, sdist: str) -> list[str]:
    with tarfile.open(sdist) as archive:
        sdist_names = [member.name.split("/", 1)[1] for member in archive.getmembers()
                       if member.isfile() and "/" in member.name]
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = archive.namelist()
    models = shipped_models(sdist_names)
    problems = sdist_problems(sdist_names) + wheel_problems(wheel_names, models)
    if not models:
        problems.append("the sdist ships no pretrained model")
    print(f"sdist: {len(sdist_names)} files; wheel: {len(wheel_names)} files, "
          f"pretrained models {', '.join(models)}")
    return problems


def run(*command: str) -> str:
    """Runs an installed command; its output, or exit 1 with what it printed."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}"
                 f"{result.stderr}")
    print(f"$ {' '.join(command)}\n{result.stdout.strip()}")
    return result.stdout


def smoke(data_dir: str | None) -> list[str]:
    import importlib.metadata

    import vae_jax
    from vae_jax import pretrained
    problems = []
    environment = os.path.dirname(os.path.dirname(sys.executable))
    print(f"vae_jax {vae_jax.__version__} from {os.path.dirname(vae_jax.__file__)}")
    if not os.path.abspath(vae_jax.__file__).startswith(os.path.abspath(environment)):
        problems.append(f"vae_jax was imported from {vae_jax.__file__}, not from the wheel's "
                        f"environment {environment}")
    if vae_jax.__version__ != importlib.metadata.version("vae-jax"):
        problems.append(f"vae_jax.__version__ {vae_jax.__version__} is not the metadata's")
    bin_dir = os.path.dirname(sys.executable)
    command = lambda name: os.path.join(bin_dir, name)  # noqa: E731
    run(command("vae-jax-train"), "--version")
    if data_dir:
        run(command("vae-jax-export-data"), "--out", "mnist.npz", "--data-dir", data_dir,
            "--no-download")
    else:  # tfds's mock MNIST, in this process
        import tensorflow_datasets as tfds

        from vae_jax.commands import export_data
        with tfds.testing.mock_data(num_examples=256):
            if export_data.main(["--out", "mnist.npz", "--data-dir", "mock-data"]) != 0:
                sys.exit("vae-jax-export-data failed on tfds's mock data")
    run(command("vae-jax-train"), "--dataset", "mnist.npz", "--train-split", "train[:256]",
        "--test-split", "test[:128]", "--epochs", "1", "--batch-size", "64", "--no-progress",
        "--workdir", "run")
    run(command("vae-jax-evaluate"), "--workdir", "run", "--iwae-samples", "4",
        "--no-progress")
    run(command("vae-jax-evaluate"), "--pretrained", "course", "--dataset", "mnist.npz",
        "--split", "test[:128]", "--iwae-samples", "4", "--no-progress")
    run(command("vae-jax-sample"), "--workdir", "run", "--num", "16", "--out", "run.png")
    run(command("vae-jax-sample"), "--pretrained", "course", "--num", "16", "--out",
        "course.png")
    for name in ("run.png", "course.png"):
        if not os.path.getsize(name):
            problems.append(f"vae-jax-sample wrote an empty {name}")
    for name in pretrained.names():
        model, variables, config = pretrained.load(name)  # digests verified
        print(f"pretrained {name}: z_dim {model.z_dim}, digests verified")
    if not pretrained.names():
        problems.append("no pretrained model is installed")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="check", required=True)
    copy = sub.add_parser("copy")
    copy.add_argument("repository")
    copy.add_argument("destination")
    contents = sub.add_parser("contents")
    contents.add_argument("wheel")
    contents.add_argument("sdist")
    smoke_parser = sub.add_parser("smoke")
    smoke_parser.add_argument("--data-dir", help="a tfds data directory with prepared MNIST")
    args = parser.parse_args()
    if args.check == "copy":
        print(f"copied {clean_copy(args.repository, args.destination)} files")
        return
    problems = (check_contents(args.wheel, args.sdist) if args.check == "contents"
                else smoke(args.data_dir))
    for problem in problems:
        print(f"check_artifacts: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"check_artifacts: {args.check}: all good")


if __name__ == "__main__":
    main()
