"""What a new user types wrong, answered in one line (exit code 2 from the CLI, a ConfigError from the library)
before anything expensive, and without importing torch, transformers or Ray for the commands that need none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.config import ConfigError, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "ray", "datasets", "deepspeed")

# Runs the CLI in a fresh interpreter and reports, on the last stdout line, its exit code and the heavy modules that
# were imported by the time it returned.
DRIVER = f"""
import json, sys
from orchestrator.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


def cli_subprocess(*argv: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str, str]:
    """(exit code, heavy modules imported, stdout before the report line, stderr) of `unlearn *argv`."""
    done = subprocess.run([sys.executable, "-c", DRIVER, *argv], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)
    *out, report = done.stdout.rstrip("\n").split("\n")
    result = json.loads(report)
    return result["code"], result["heavy"], "\n".join(out), done.stderr


def offline(tmp_path: Path) -> dict[str, str]:
    """The environment of a user without network: the hub switched off, an empty HF cache."""
    return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}


def model_folder(tmp_path: Path) -> Path:
    """A folder that looks like a model to `unlearn eval`, which loads the data before any model."""
    model = tmp_path / "model"
    model.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        (model / name).write_text("{}")
    return model


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    return code, capsys.readouterr().err


@pytest.fixture
def bad_yaml(tmp_path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("trian:\n  lr: 1\n")
    return path


# --- the light commands import nothing heavy -------------------------------------------------------------------


def test_methods_and_help_import_no_torch_transformers_or_ray():
    code, heavy, out, _ = cli_subprocess("methods")
    assert (code, heavy) == (0, []) and "\nnpo\n" in f"\n{out}"
    code, heavy, out, _ = cli_subprocess("--help")
    assert (code, heavy) == (0, []) and "unlearn" in out
    code, heavy, out, _ = cli_subprocess("plan", "--help")
    assert (code, heavy) == (0, []) and "--device-memory" in out


@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_config_error_imports_no_torch_transformers_or_ray(bad_yaml, command):
    code, heavy, _, err = cli_subprocess(command, str(bad_yaml))
    assert (code, heavy) == (2, [])
    assert err == f"unlearn: error: {bad_yaml}: unknown key 'trian'\n"


def test_bad_arguments_import_nothing_heavy(tmp_path):
    for argv in (("run", "--set", "train.lr.x=1"), ("run", "--workers", "two"), ("eval", str(tmp_path / "nope"))):
        code, heavy, _, err = cli_subprocess(*argv)
        assert (code, heavy) == (2, []), argv
        assert err.startswith("unlearn: error: ") and err.count("\n") == 1, err


# --- one line, exit code 2 --------------------------------------------------------------------------------------


def test_set_below_a_value_is_one_line(capsys):
    code, err = run_cli(capsys, "run", "--set", "train.max_grad_norm.x=1")
    assert code == 2
    assert err == "unlearn: error: overrides: train.max_grad_norm.x: 'train.max_grad_norm' is a value (1.0), " \
                  "not a section\n"
    code, err = run_cli(capsys, "run", "--set", "train.lr.x=1")  # lr is unset (the recipe's): a section is refused
    assert code == 2 and err.startswith("unlearn: error: overrides: train.lr: ") and err.count("\n") == 1


def test_set_with_malformed_yaml_is_one_line(capsys):
    code, err = run_cli(capsys, "run", "--set", "train.lr=[1,")
    assert code == 2
    assert err.startswith("unlearn: error: --set train.lr: the value '[1,' is not valid YAML (") and \
        err.count("\n") == 1


def test_set_creates_an_unset_optional_section():
    key, value = parse_override("train.lora.rank=4")
    assert load_config(None).with_overrides(**{key: value}).train.lora.rank == 4


def test_parse_override_errors_are_config_errors():
    with pytest.raises(ConfigError, match="--set expects key=value, got '=3'"):
        parse_override("=3")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("method.hparams={beta: ")


def test_argparse_errors_are_one_line(capsys):
    code, err = run_cli(capsys, "run", "--workers", "two")
    assert code == 2
    assert err == "unlearn: error: argument --workers: invalid int value: 'two' (see `unlearn run --help`)\n"
    code, err = run_cli(capsys, "frobnicate")
    assert code == 2 and err.startswith("unlearn: error: argument command: invalid choice: 'frobnicate'")
    assert err.count("\n") == 1


def test_workers_below_one_is_one_line(capsys):
    code, err = run_cli(capsys, "run", "--workers", "0")
    assert code == 2 and err.startswith("unlearn: error: overrides: train.workers = 0: ") and err.count("\n") == 1


def test_yaml_that_is_a_list_is_one_line(capsys, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- method: npo\n")
    code, err = run_cli(capsys, "run", str(path))
    assert (code, err) == (2, f"unlearn: error: {path}: expected a mapping at the top level, got list\n")


def test_unknown_method_in_yaml_is_one_line(capsys, tmp_path):
    path = tmp_path / "method.yaml"
    path.write_text("method:\n  name: forgetify\n")
    code, err = run_cli(capsys, "plan", str(path))
    assert code == 2 and "unknown method 'forgetify'; valid choices: ceu, ga, graddiff" in err and err.count("\n") == 1


def test_eval_of_a_folder_that_is_no_model(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    code, err = run_cli(capsys, "eval", str(tmp_path))
    assert code == 2
    assert err == f"unlearn: error: {tmp_path} is not a saved model with its tokenizer (no tokenizer_config.json); " \
                  "pass a run's model/ folder\n"


def test_report_of_a_damaged_summary(capsys, tmp_path):
    (tmp_path / "summary.json").write_text('{"method": ')
    code, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 2 and err.startswith(f"unlearn: error: {tmp_path / 'summary.json'}: not valid JSON (")
    (tmp_path / "summary.json").write_text('{"method": "npo"}')
    code, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 2 and err.startswith(f"unlearn: error: {tmp_path / 'summary.json'}: not a run summary (no ")


def test_tofu_without_the_hub_names_data_tofu_path(tmp_path):
    """A real `datasets.load_dataset` with the hub switched off and an empty cache: what a user without network
    gets. `unlearn eval` loads the data before any model, so the model folder only needs to look like one."""
    config = tmp_path / "tofu.yaml"
    config.write_text("data:\n  source: tofu\n")
    code, heavy, _, err = cli_subprocess("eval", str(model_folder(tmp_path)), str(config), env=offline(tmp_path))
    assert code == 2 and "ray" not in heavy
    assert err.startswith("unlearn: error: could not load the TOFU dataset 'locuslab/TOFU' (config 'forget10': ")
    assert err.rstrip("\n").endswith("set data.tofu_path to a local copy "
                                     "(git clone https://huggingface.co/datasets/locuslab/TOFU)")
    assert err.count("\n") == 1


def test_a_model_folder_that_does_not_exist_is_refused_at_load(capsys, tmp_path):
    """Before this check the run started Ray, generated the data and ended in a huggingface_hub traceback."""
    path = tmp_path / "model.yaml"
    path.write_text(f"model:\n  name: {tmp_path / 'absent'}\n")
    code, err = run_cli(capsys, "run", str(path))
    assert (code, err) == (2, f"unlearn: error: {path}: model.name: no such model folder '{tmp_path / 'absent'}'\n")
    with pytest.raises(ConfigError, match="model.retain_model: no such model folder './nowhere'"):
        load_config(None).with_overrides(**{"model.retain_model": "./nowhere"})
    assert load_config(None).with_overrides(**{"model.name": "org/some-model"}).model.name == "org/some-model"


def test_hyperparameter_errors_name_the_field_without_pydantic_prefixes(capsys):
    code, err = run_cli(capsys, "run", "--method", "soul", "--set", "method.hparams.objective_hparams.betta=1")
    assert code == 2
    assert err == ("unlearn: error: overrides: method: method 'soul': hyperparameter 'objective_hparams': method "
                   "'graddiff': hyperparameter 'betta' = 1: Extra inputs are not permitted\n")
    code, err = run_cli(capsys, "run", "--method", "ofmu", "--set", "method.hparams.rho0=5")
    assert (code, err) == (2, "unlearn: error: overrides: method: method 'ofmu': rho_max (1.0) must be >= rho0 (5.0)\n")


def test_a_folder_given_as_config_is_one_line(capsys, tmp_path):
    code, err = run_cli(capsys, "run", str(tmp_path))
    assert (code, err) == (2, f"unlearn: error: {tmp_path} is a folder, not a config file (pass one of its .yaml "
                              "files)\n")


@pytest.mark.parametrize("argv", [("--method", "ofmu"), ("--method", "soul", "--set",
                                                         "method.hparams.hessian_estimator=gnb")])
def test_a_method_that_cannot_run_under_deepspeed_is_refused_before_ray(capsys, argv):
    code, err = run_cli(capsys, "run", *argv, "--deepspeed", str(REPO / "cluster/deepspeed/zero3.json"))
    assert code == 2 and "cannot run under DeepSpeed" in err and err.count("\n") == 1
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def _no_ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is None or not ray.is_initialized()


def test_a_text_file_that_is_not_there_is_refused_before_ray(capsys, tmp_path):
    """A config naming corpus files that are not there (a typo, the wrong working directory): one line, no Ray."""
    path = tmp_path / "text.yaml"
    path.write_text(f"data:\n  source: text\n  text:\n    forget: {tmp_path / 'book.txt'}\n"
                    f"    retain: {tmp_path / 'news.txt'}\n")
    code, err = run_cli(capsys, "run", str(path))
    assert code == 2 and err.count("\n") == 1 and str(tmp_path / "book.txt") in err
    assert _no_ray_started()


def test_more_workers_than_a_private_ray_has_cpus_is_refused_before_ray(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, err = run_cli(capsys, "run", "--workers", "3", "--set", "ray.num_cpus=2", "--set", "train.cpus_per_worker=1")
    assert (code, err) == (2, "unlearn: error: train.workers=3 x 1 CPU(s) each needs 3 CPUs, but the Ray cluster "
                              "has 2\n")
    assert _no_ray_started()


def test_run_on_tofu_without_the_hub_is_refused_before_ray(tmp_path):
    config = tmp_path / "tofu.yaml"
    config.write_text("data:\n  source: tofu\n")
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "RAY_ADDRESS": ""}
    code, heavy, _, err = cli_subprocess("run", str(config), "--output", str(tmp_path / "out"), env=offline)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("unlearn: error: could not load the TOFU dataset 'locuslab/TOFU'")
    assert "using a private local Ray" not in err


# --- the benchmarks and their methods (issue 29): named in one line before any data or model is loaded -----------
@pytest.mark.parametrize("yaml_text, message", [
    ("data:\n  source: muse\n  muse: {corpus: sports}\n", "data.muse.corpus = 'sports': Input should be 'news' or "
     "'books'"),
    ("data:\n  source: wmdp\n  wmdp: {subsets: [cyber, physics]}\n", "data.wmdp.subsets.1 = 'physics': Input should "
     "be 'bio', 'chem' or 'cyber'"),
])
def test_an_unknown_benchmark_part_is_one_line(capsys, tmp_path, yaml_text, message):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml_text)
    code, err = run_cli(capsys, "run", str(path))
    assert (code, err) == (2, f"unlearn: error: {path}: {message}\n")


def test_rmu_on_a_layer_the_model_lacks_is_one_line_before_any_work(tmp_path):
    """The embedded tiny model has 4 layers: layer 9 is refused from the model's shape, before data, Ray or a model
    is touched (no torch, transformers, datasets or ray imported by then)."""
    code, heavy, _, err = cli_subprocess("run", "--method", "rmu", "--set", "method.hparams.layer=9")
    assert code == 2 and heavy == []
    assert err == ("unlearn: error: method 'rmu': RMU layer 9 is out of range: the model has 4 decoder layers "
                   "(0..3) (model 'tiny')\n")


def test_the_gated_wmdp_bio_corpus_without_its_file_is_one_line(capsys, tmp_path):
    path = tmp_path / "bio.yaml"
    path.write_text("data:\n  source: wmdp\n  wmdp: {subsets: [bio]}\n")
    code, err = run_cli(capsys, "run", str(path))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("unlearn: error: ") and "bio" in err and "gated" in err and "bio_forget_file" in err


def test_wmdp_without_the_hub_names_the_data_set(tmp_path):
    """A real `datasets.load_dataset` with the hub switched off and an empty cache."""
    config = tmp_path / "wmdp.yaml"
    config.write_text("data:\n  source: wmdp\n  wmdp: {subsets: [cyber]}\n")
    code, heavy, _, err = cli_subprocess("eval", str(model_folder(tmp_path)), str(config), env=offline(tmp_path))
    assert code == 2 and "ray" not in heavy and err.count("\n") == 1
    assert err.startswith("unlearn: error: ") and "cais/wmdp" in err


# --- recovery attacks (eval.attacks) ---------------------------------------------------------------------------


@pytest.mark.parametrize("setting, message", [
    ("eval.attacks.run=[jailbreak]", "eval.attacks.run.0 = 'jailbreak': Input should be 'relearn', 'quantise' or "
                                     "'probe'"),
    ("eval.attacks.relearn.fraction=0", "eval.attacks.relearn.fraction = 0: Input should be greater than 0"),
    ("eval.attacks.relearn.fraction=1", "eval.attacks.relearn.fraction = 1: Input should be less than 1"),
    ("eval.attacks.quantise.bits=[3]", "eval.attacks.quantise.bits.0 = 3: Input should be 4 or 8"),
    ("eval.attacks.run=[relearn, relearn]", "names an attack twice"),
])
def test_a_bad_attack_setting_is_one_line_without_torch(setting, message):
    code, heavy, _, err = cli_subprocess("run", "--set", setting)
    assert code == 2 and heavy == [] and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("argv, message", [
    (("--set", "eval.attacks.quantise.method=nf4", "--set", "eval.attacks.quantise.bits=[4]"), "nf4 needs a GPU"),
    (("--deepspeed", str(REPO / "cluster/deepspeed/zero3.json"), "--set", "eval.attacks={}"), "ZeRO-3 partitions"),
    (("--set", "eval.attacks.probe.few_shot=100000"), "few_shot=100000: the data"),
])
def test_attacks_that_cannot_run_are_refused_before_ray(capsys, argv, message):
    code, err = run_cli(capsys, "run", *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert _no_ray_started()


def test_relearning_on_a_split_with_no_examples_is_refused_before_ray(capsys, tmp_path):
    """A text corpus has no neighbour split: benign relearning on it has nothing to train on."""
    for name in ("book", "news"):
        (tmp_path / f"{name}.txt").write_text("\n\n".join(" ".join(f"{name}{i}w{j}" for j in range(40)) for i in range(6)))
    path = tmp_path / "text.yaml"
    path.write_text(f"data:\n  source: text\n  text:\n    forget: {tmp_path / 'book.txt'}\n"
                    f"    retain: {tmp_path / 'news.txt'}\neval:\n  attacks:\n    relearn:\n      data: neighbour\n")
    code, err = run_cli(capsys, "run", str(path))
    assert code == 2 and err.count("\n") == 1 and "relearn.data='neighbour'" in err and "no neighbour" in err, err
    assert _no_ray_started()
