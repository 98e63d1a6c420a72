"""Config loading: defaults, overrides, and one-line errors that name the key, the value and the choices."""

from __future__ import annotations

import pytest

from orchestrator.config import ConfigError, ExperimentConfig, load_config, parse_config


def test_embedded_default_is_valid():
    config = load_config(None)
    assert config.model.name == "tiny"
    assert config.data.source == "synthetic"
    assert config.method.name == "npo"
    assert config.resolved_output_dir().name == "default-npo"


def test_overrides_are_validated_again():
    config = parse_config({}).with_overrides(**{"train.lr": 5e-4, "method.name": "undial", "method.hparams": {"gamma": 3}})
    assert config.train.lr == 5e-4
    assert config.method.hparams == {"gamma": 3}
    with pytest.raises(ConfigError, match="train.lr"):
        config.with_overrides(**{"train.lr": -1})


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"train": {"lr": -0.1}}, "train.lr = -0.1: Input should be greater than 0"),
        ({"method": {"name": "nope"}}, "unknown method 'nope'; valid choices: "),
        ({"method": {"name": "npo", "hparams": {"beta": -1}}}, "'beta'"),
        ({"method": {"name": "npo", "hparams": {"betta": 1}}}, "'betta'"),
        ({"trian": {}}, "unknown key 'trian'"),
        ({"data": {"forget_fraction": 0.2}}, "data.forget_fraction = 0.2"),
        ({"data": {"source": "text"}}, "data.text.forget"),
        ({"model": {"tiny": {"hidden_size": 30, "num_heads": 4}}}, "must divide hidden_size"),
        ({"train": {"deepspeed": "/nonexistent/zero3.json"}}, "no such file"),
    ],
)
def test_bad_values_give_one_line_errors(data, needle):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_unknown_method_lists_choices():
    with pytest.raises(ConfigError) as err:
        parse_config({"method": {"name": "forgetify"}})
    for name in ("ga", "graddiff", "npo", "simnpo", "idkpo", "undial", "soul", "icu", "ofmu", "ihl", "ihl_fila"):
        assert name in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(scalar)


def test_yaml_round_trip(tmp_path):
    import yaml

    config = parse_config({"method": {"name": "graddiff", "hparams": {"alpha": 2.0}}, "train": {"epochs": 3}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.model_dump()))
    assert load_config(path) == config
    assert isinstance(config, ExperimentConfig)


def test_a_muse_config_without_a_model_unlearns_muses_own_models():
    from orchestrator.config import parse_config

    books = parse_config({"data": {"source": "muse", "muse": {"corpus": "books"}}})
    assert (books.model.name, books.model.retain_model, books.model.tokenizer) == (
        "muse-bench/MUSE-books_target", "muse-bench/MUSE-books_retrain", "meta-llama/Llama-2-7b-hf")
    own = parse_config({"data": {"source": "muse"}, "model": {"name": "org/my-target", "retain_model": None}})
    assert (own.model.name, own.model.retain_model) == ("org/my-target", None)
    assert parse_config({"data": {"source": "muse"}, "model": {"name": "tiny"}}).model.name == "tiny"
    assert parse_config({}).model.name == "tiny"  # the embedded default is untouched
