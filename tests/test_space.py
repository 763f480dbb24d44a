"""The Space folder of python -m train.space: bundled models, requirements, and the app started from it.

tests/test_app.py covers the Hub-id folder, its card metadata and the option checks.
"""

import ast
import importlib.metadata
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard

import app
from brain_tumor_classifier.predictor import Predictor
from train import space as space_builder
from train import space_check

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = REPO_ROOT / "space" / "models" / "braincancernet"
LOCAL_PACKAGES = {"app", "brain_tumor_classifier", "space"}
# Suffixes of the files a Space folder may contain outside space/models/: code, card, requirements
# and app_config.json. Any image there would be a copied slice.
CODE_SUFFIXES = {".py", ".md", ".txt", ".json"}
FULL_CHECK_VARIABLE = "BRAIN_TUMOR_SPACE_CHECK"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(requirements: Path) -> dict[str, str]:
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[_canonical(name)] = version
    return pins


def _third_party_imports(folder: Path) -> set[str]:
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {module for module in modules if module not in sys.stdlib_module_names and module not in LOCAL_PACKAGES}


@pytest.fixture()
def run_folder(tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny export with a checkpoint and a hidden file that must stay behind."""
    folder = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "checkpoints" / "checkpoint_0").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint_0" / "optimizer.bin").write_bytes(b"state")
    (folder / ".notes").write_text("local notes\n")
    (folder / "metrics.json").write_text('{"accuracy": 0.5}\n')
    return folder


# Bundled models ---------------------------------------------------------------------------------


def test_model_dir_copied_without_checkpoints(run_folder, tmp_path):
    output = tmp_path / "space-repo"

    space_builder.assemble_space([run_folder], output)

    bundled = output / "space" / "models" / "tiny"
    copied = sorted(path.relative_to(bundled).as_posix() for path in bundled.rglob("*") if path.is_file())
    assert copied == ["README.md", "config.json", "metrics.json", "model.safetensors"]
    assert json.loads((output / "space" / "app_config.json").read_text()) == {"models": ["space/models/tiny"]}


def test_card_lists_only_hub_models(run_folder, tmp_path):
    space_builder.assemble_space([run_folder, "example-org/brain-tumor-resnet50"], tmp_path)

    card = SpaceCard.load(tmp_path / "README.md")
    assert card.data.models == ["example-org/brain-tumor-resnet50"]


def test_cli_keeps_option_order(run_folder, tmp_path):
    output = tmp_path / "space-repo"

    status = space_builder.main(
        ["--model-id", "example-org/first", "--model-dir", str(run_folder), "--model-id", "example-org/third",
         "--output-dir", str(output)]
    )

    assert status == 0
    config = json.loads((output / "space" / "app_config.json").read_text())
    assert config == {"models": ["example-org/first", "space/models/tiny", "example-org/third"]}


def test_cli_needs_a_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        space_builder.main(["--output-dir", str(tmp_path / "space-repo")])

    assert exit_info.value.code == 2
    assert "--model-id ORG/NAME or --model-dir RUN_DIR" in capsys.readouterr().err


def test_reassembly_drops_old_models(run_folder, tmp_path):
    space_builder.assemble_space([run_folder], tmp_path)
    space_builder.assemble_space(["example-org/brain-tumor-braincancernet"], tmp_path)

    assert not (tmp_path / "space" / "models").exists()


def test_incomplete_model_dir_rejected(run_folder, tmp_path):
    (run_folder / "model.safetensors").unlink()

    with pytest.raises(space_builder.SpaceAssemblyError, match="lacks model.safetensors"):
        space_builder.assemble_space([run_folder], tmp_path / "space-repo")


def test_missing_model_dir_rejected(tmp_path):
    with pytest.raises(space_builder.SpaceAssemblyError, match="is not a folder"):
        space_builder.assemble_space([tmp_path / "absent"], tmp_path / "space-repo")


def test_model_dirs_with_one_name_rejected(run_folder, tmp_path):
    twin = tmp_path / "other" / "tiny"
    shutil.copytree(run_folder, twin)

    with pytest.raises(space_builder.SpaceAssemblyError, match="share a name"):
        space_builder.assemble_space([run_folder, twin], tmp_path / "space-repo")


def test_bundled_model_loads_from_space_folder(run_folder, tmp_path, monkeypatch):
    output = tmp_path / "space-repo"
    space_builder.assemble_space([run_folder], output)
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    # A Space starts the app with the folder as working directory, which the relative path needs.
    monkeypatch.chdir(output)

    sources = app.model_sources(app.parse_args([]), config_path=output / "space" / "app_config.json")
    predictors = app.load_predictors(sources)

    assert sources == ["space/models/tiny"]
    assert list(predictors) == ["tiny"]
    assert isinstance(predictors["tiny"], Predictor)


# What the folder contains -----------------------------------------------------------------------


@pytest.mark.parametrize("with_model_dir", [False, True], ids=["hub-id", "model-dir"])
def test_folder_holds_no_images_outside_models(run_folder, tmp_path, with_model_dir):
    output = tmp_path / "space-repo"
    models = [run_folder] if with_model_dir else ["example-org/brain-tumor-braincancernet"]

    space_builder.assemble_space(models, output)

    models_dir = output / "space" / "models"
    for path in output.rglob("*"):
        if path.is_file() and not path.is_relative_to(models_dir):
            assert path.suffix in CODE_SUFFIXES, f"{path.relative_to(output)} is not code or configuration"


def test_folder_has_every_local_module(tmp_path):
    space_builder.assemble_space(["example-org/brain-tumor-braincancernet"], tmp_path)

    for package in ("brain_tumor_classifier", "space"):
        expected = sorted(path.name for path in (REPO_ROOT / package).glob("*.py"))
        copied = sorted(path.name for path in (tmp_path / package).glob("*.py"))
        assert copied == expected, f"the Space folder's {package}/ differs from the checkout's"


# Requirements -----------------------------------------------------------------------------------


def test_requirements_cover_third_party_imports(tmp_path):
    space_builder.assemble_space(["example-org/brain-tumor-braincancernet"], tmp_path)
    pins = _pins(tmp_path / "requirements.txt")
    distributions = importlib.metadata.packages_distributions()

    for module in sorted(_third_party_imports(tmp_path)):
        names = {_canonical(name) for name in distributions.get(module, [module])}
        assert names & pins.keys(), f"{module} is imported by the Space but no requirement provides it"


def test_requirements_match_installed_versions():
    pins = _pins(space_builder.REQUIREMENTS)

    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, f"requirements.txt pins {name}=={version}"


def test_requirements_leave_out_training_packages():
    pins = _pins(space_builder.REQUIREMENTS)

    for name in ("datasets", "accelerate", "scikit-learn", "matplotlib", "pytest"):
        assert name not in pins, f"the Space does not import {name}, so requirements.txt should not pin it"


def test_card_sdk_version_matches_gradio_pin():
    pins = _pins(space_builder.REQUIREMENTS)
    card = SpaceCard.load(space_builder.CARD_TEMPLATE)

    assert card.data.sdk_version == pins["gradio"]


# The app started from the folder ----------------------------------------------------------------


def test_check_rejects_used_venv_dir(tmp_path, slice_png):
    space_builder.assemble_space(["example-org/brain-tumor-braincancernet"], tmp_path / "space-repo")
    venv_dir = tmp_path / "venv"
    venv_dir.mkdir()
    (venv_dir / "pyvenv.cfg").write_text("home = /usr/bin\n")

    with pytest.raises(space_check.SpaceCheckError, match="not an empty folder"):
        space_check.check_space(tmp_path / "space-repo", venv_dir, slice_png)


def test_check_rejects_folder_without_app(tmp_path, slice_png):
    with pytest.raises(space_check.SpaceCheckError, match="has no app.py"):
        space_check.check_space(tmp_path, tmp_path / "venv", slice_png)


def test_app_serves_from_space_folder(run_folder, tmp_path, slice_png):
    # The development environment replaces the Space's new one, which only the opt-in test
    # below builds. The server is a real `python app.py` started inside the folder.
    output = tmp_path / "space-repo"
    space_builder.assemble_space([run_folder], output)
    log_path = tmp_path / "app.log"

    with space_check.run_app(Path(sys.executable), output, log_path, timeout_s=300) as url:
        label, gallery, model_line = space_check.classify(url, slice_png, timeout_s=300)

    assert label["label"] in ("glioma", "meningioma", "pituitary")
    assert len(gallery) > 0
    assert "tiny" in model_line


@pytest.mark.skipif(
    os.environ.get(FULL_CHECK_VARIABLE) != "1",
    reason=f"installs the Space's requirements into a new virtual environment (minutes, about 6 GB); "
    f"set {FULL_CHECK_VARIABLE}=1 to run it",
)
def test_space_runs_in_fresh_venv(tmp_path, real_slice_path):
    output = tmp_path / "space-repo"
    space_builder.assemble_space([BUNDLED_MODEL], output)
    venv_dir = tmp_path / "venv"

    try:
        result = space_check.check_space(output, venv_dir, real_slice_path)
    finally:
        shutil.rmtree(venv_dir, ignore_errors=True)

    assert result.label in ("glioma", "meningioma", "pituitary")
    assert set(result.confidences) == {"glioma", "meningioma", "pituitary"}
    assert result.gallery_images > 0
    assert "braincancernet" in result.model_line
