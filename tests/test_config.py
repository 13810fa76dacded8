"""YAML configs: the shipped files, one-line UserErrors naming the key, --set overrides, CLI exits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from diffjscc.cli import main
from diffjscc.config import Config, config_from_dict, load_config
from diffjscc.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PACKAGED = Path(__file__).resolve().parents[1] / "diffjscc" / "configs"


def _tiny() -> dict:
    return yaml.safe_load((CONFIGS / "tiny.yaml").read_text())


def _write(tmp_path: Path, raw: dict | str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def _error(raw: dict, overrides: list[str] | None = None) -> str:
    with pytest.raises(UserError) as info:
        config_from_dict(raw, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("name", ["tiny.yaml", "cifar10.yaml", "cifar10_original.yaml"])
def test_shipped_configs_load(name):
    """Both configs load, validate, and equal the copies packaged with diffjscc."""
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, Config)
    assert cfg.latent_dim == cfg.c_out * (cfg.image_size // 4) ** 2
    assert load_config(PACKAGED / name) == cfg
    # to_dict round-trips through the loader.
    assert config_from_dict(cfg.to_dict()) == cfg


def test_cifar10_config_is_the_measured_receiver_recipe_at_scale():
    """cifar10.yaml: the shipped receivers' recipe (docs/models.md) with the original's network."""
    cfg, original = load_config(CONFIGS / "cifar10.yaml"), load_config(CONFIGS / "cifar10_original.yaml")
    assert (cfg.conditioning, cfg.prediction, cfg.sample_spacing, cfg.sample_steps) == ("residual", "v", "trailing", 8)
    assert cfg.snr_adaptive and cfg.snr_range == [0.0, 20.0] and cfg.bf16 == "auto" and cfg.condition_dropout == 0.1
    network = ("num_channels", "channel_mult", "num_res_blocks", "attention_resolutions", "dropout",
               "diffusion_steps", "noise_schedule", "learn_sigma", "batch_size", "lr", "ema_rate", "c_out")
    assert all(getattr(cfg, key) == getattr(original, key) for key in network)


def test_cifar10_original_config_is_original_setup():
    """cifar10_original.yaml is improved-diffusion's CIFAR-10 model and Diff_JSCC's 1/6-rate latent."""
    cfg = load_config(CONFIGS / "cifar10_original.yaml")
    assert (cfg.conditioning, cfg.prediction, cfg.sample_steps, cfg.snr_adaptive) == ("embed", "epsilon", 50, False)
    assert cfg.image_size == 32
    assert cfg.num_channels == 128
    assert cfg.num_res_blocks == 3
    assert cfg.attention_resolutions == [16, 8]
    assert cfg.noise_schedule == "cosine"
    assert cfg.learn_sigma is True
    assert cfg.diffusion_steps == 4000
    assert cfg.batch_size == 64
    assert cfg.lr == pytest.approx(1e-4)
    assert cfg.ema_rate == pytest.approx(0.9999)
    assert cfg.dropout == pytest.approx(0.3)
    assert cfg.latent_dim == 512 and cfg.c_out == 8


def test_cifar10_unet_size():
    """The UNet built from cifar10.yaml has the original's ~52M parameters."""
    from diffjscc.diffusion.unet import ConditionalUNet

    cfg = load_config(CONFIGS / "cifar10.yaml")
    with torch.device("meta"):  # shapes only: no 53M-parameter random initialisation
        unet = ConditionalUNet(
            image_size=cfg.image_size, num_channels=cfg.num_channels, channel_mult=tuple(cfg.channel_mult),
            num_res_blocks=cfg.num_res_blocks, attention_resolutions=tuple(cfg.attention_resolutions),
            num_heads=cfg.num_heads, dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm,
            learn_sigma=cfg.learn_sigma, latent_dim=cfg.latent_dim)
    assert unet.out_channels == 6
    count = sum(p.numel() for p in unet.parameters())
    assert 51e6 <= count <= 54e6, count


# ---------------------------------------------------------------- errors name the key
def test_unknown_key_with_hint():
    """An unknown key is named, with a did-you-mean hint for a near miss."""
    raw = _tiny()
    raw["batchsize"] = raw.pop("batch_size")
    message = _error(raw)
    assert "'batchsize'" in message and "did you mean 'batch_size'" in message
    message = _error({**_tiny(), "completely_unrelated": 1})
    assert "'completely_unrelated'" in message and "did you mean" not in message


@pytest.mark.parametrize("key,value,expected", [
    ("lr", "abc", "number"),
    ("batch_size", 1.5, "integer"),
    ("batch_size", True, "integer"),
    ("class_cond", "maybe", "true or false"),
    ("attention_resolutions", {"a": 1}, "list"),
    ("data_dir", [1, 2], "string"),
])
def test_wrong_type(key, value, expected):
    """A value of the wrong type is a UserError naming the key and the expected type."""
    message = _error({**_tiny(), key: value})
    assert f"'{key}'" in message and expected in message


@pytest.mark.parametrize("changes,key", [
    ({"snr_range": [20, 0]}, "snr_range"),
    ({"snr_range": [0, 10, 20]}, "snr_range"),
    ({"latent_dim": 256}, "latent_dim"),
    ({"c_out": 4}, "latent_dim"),
    ({"batch_size": -4}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"ema_rate": 1.5}, "ema_rate"),
    ({"lr": 0.0}, "lr"),
    ({"dropout": 1.0}, "dropout"),
    ({"attention_resolutions": [4]}, "attention_resolutions"),
    ({"mode": "frozen"}, "jscc_encoder_path"),
    ({"mode": "diffuse"}, "mode"),
    ({"noise_schedule": "quadratic"}, "noise_schedule"),
    ({"prediction": "sample"}, "prediction"),
    ({"equalizer": "lmmse"}, "equalizer"),
    ({"timestep_respacing": "ddim50"}, "timestep_respacing' was removed"),
    ({"image_size": 30}, "image_size"),
    ({"channel_mult": [1, 2, 2, 2, 2, 2, 2]}, "channel_mult"),
])
def test_impossible_values(changes, key):
    """Values that cannot work are rejected with a one-line message naming the key."""
    message = _error({**_tiny(), **changes})
    assert key in message


def test_frozen_mode_with_encoder_path_is_valid():
    """Frozen mode is accepted once jscc_encoder_path is given."""
    cfg = config_from_dict({**_tiny(), "mode": "frozen", "jscc_encoder_path": "runs/jscc/ckpt.pt"})
    assert cfg.mode == "frozen"


def test_bad_yaml_and_missing_file(tmp_path):
    """Unparseable YAML, a non-mapping document and a missing file are UserErrors naming the file."""
    bad = _write(tmp_path, "batch_size: [1, 2\nlr: 0.1\n", "bad.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(UserError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n", "list.yaml"))
    missing = tmp_path / "missing.yaml"
    with pytest.raises(UserError, match="not found") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_empty_file_gives_defaults(tmp_path):
    """An empty YAML file is the default Config."""
    assert load_config(_write(tmp_path, "", "empty.yaml")) == Config().validate()


# ---------------------------------------------------------------- --set overrides
def test_set_overrides_are_coerced(tmp_path):
    """--set values are parsed as YAML and coerced to the key's type."""
    path = _write(tmp_path, _tiny())
    cfg = load_config(path, ["lr=0.001", "snr_range=[0,20]", "attention_resolutions=16,8",
                             "batch_size=16", "learn_sigma=false", "log_dir=runs/x", "ema_rate=1e-3"])
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)
    assert cfg.snr_range == [0.0, 20.0] and all(isinstance(v, float) for v in cfg.snr_range)
    assert cfg.attention_resolutions == [16, 8]
    assert cfg.batch_size == 16 and isinstance(cfg.batch_size, int)
    assert cfg.learn_sigma is False
    assert cfg.log_dir == "runs/x"
    assert cfg.ema_rate == pytest.approx(1e-3)


def test_retired_key_loads_when_empty_as_old_checkpoints_hold_it(tmp_path):
    """Configs saved before `timestep_respacing` was removed still load; a value is an error."""
    cfg = load_config(_write(tmp_path, {**_tiny(), "timestep_respacing": ""}))
    assert not hasattr(cfg, "timestep_respacing")
    assert "was removed" in _error(_tiny(), ["timestep_respacing=ddim50"])


def test_equalizer_defaults_to_mmse_and_configs_without_it_load(tmp_path):
    """`equalizer` is new: a config (or a checkpoint's) without it loads with MMSE; it is not an
    architecture key (the weights do not depend on it: a ZF-trained model can be run with MMSE)."""
    tiny = {key: value for key, value in _tiny().items() if key != "equalizer"}
    assert load_config(_write(tmp_path, tiny)).equalizer == "mmse"
    assert load_config(_write(tmp_path, tiny), ["equalizer=zf"]).equalizer == "zf"
    from diffjscc.config import ARCHITECTURE_KEYS, EQUALIZERS
    assert EQUALIZERS == ("mmse", "zf") and "equalizer" not in ARCHITECTURE_KEYS


def test_set_errors():
    """--set without '=', with an unknown key, or with a bad value is a UserError."""
    assert "key=value" in _error(_tiny(), ["lr"])
    message = _error(_tiny(), ["nonsense=1"])
    assert "'nonsense'" in message and "--set" in message
    assert "did you mean 'batch_size'" in _error(_tiny(), ["batchsize=4"])
    assert "'lr'" in _error(_tiny(), ["lr=fast"])
    # Overrides are validated like file values.
    assert "ema_rate" in _error(_tiny(), ["ema_rate=1.5"])


# ---------------------------------------------------------------- through the CLI
def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("diffjscc: error:")
    assert "Traceback" not in captured.err
    return lines[0]


def test_cli_bad_config_is_one_line(tmp_path, capsys):
    """`diffjscc train bad.yaml` exits 2 with one error line naming the key."""
    path = _write(tmp_path, {**_tiny(), "batch_size": -4})
    assert main(["train", str(path)]) == 2
    assert "batch_size" in _one_error_line(capsys)

    path = _write(tmp_path, {**_tiny(), "batchsize": 4}, "typo.yaml")
    assert main(["train", str(path)]) == 2
    assert "did you mean 'batch_size'" in _one_error_line(capsys)


def test_cli_argparse_error_is_one_line(tmp_path, capsys):
    """An unknown option or a missing argument is one line and exit status 2, not a usage dump."""
    assert main(["train", str(CONFIGS / "tiny.yaml"), "--bogus-option"]) == 2
    assert "--bogus-option" in _one_error_line(capsys)
    assert main(["train"]) == 2
    assert "config" in _one_error_line(capsys)
    assert main(["frobnicate"]) == 2
    assert "frobnicate" in _one_error_line(capsys)


def test_cli_bad_set_is_one_line(capsys):
    """--set with an unknown key or without '=' is one line and exit status 2."""
    assert main(["train", str(CONFIGS / "tiny.yaml"), "--set", "nonsense=1"]) == 2
    assert "nonsense" in _one_error_line(capsys)
    assert main(["train", str(CONFIGS / "tiny.yaml"), "--set", "lr"]) == 2
    assert "key=value" in _one_error_line(capsys)


def test_cli_missing_config_file(tmp_path, capsys):
    """A missing config file is one line naming the path."""
    missing = tmp_path / "nope.yaml"
    assert main(["train", str(missing)]) == 2
    assert str(missing) in _one_error_line(capsys)


def test_cli_train_help(capsys):
    """`diffjscc train --help` exits 0 and documents --set and --resume."""
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--set" in out and "--resume" in out
