"""Typed, validated experiment configuration (one flat YAML file per experiment).

Key names follow the original Diff_JSCC / improved-diffusion YAML where one exists
(``data_dir``, ``log_dir``, ``batch_size``, ``lr``, ``ema_rate``, ``image_size``,
``num_channels``, ``num_res_blocks``, ``attention_resolutions``, ``learn_sigma``,
``diffusion_steps``, ``noise_schedule``, ``class_cond``, ``c_out``,
``jscc_encoder_path``...). ``total_steps`` is the original's ``lr_anneal_steps``.

Every problem is a :class:`~diffjscc.errors.UserError` whose one-line message names the key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from diffjscc.errors import UserError

MODES = ("jscc", "joint", "frozen", "unconditional")
ENCODERS = ("jscc", "half_unet")
CHANNELS = ("awgn", "rayleigh_block", "rayleigh_fast", "sionna_tdl", "none")
FADING_CHANNELS = ("rayleigh_block", "rayleigh_fast", "sionna_tdl")  # with CSI: equalised by EQUALIZERS
EQUALIZERS = ("mmse", "zf")  # fading with CSI: conj(h)·y/(|h|² + σ²), bounded; or y/h, unbounded in deep fades
CONDITIONINGS = ("embed", "spatial", "residual")
PREDICTIONS = ("epsilon", "x0", "v")  # what the diffusion network outputs (besides the variance)
TDL_MODELS = ("A", "B", "C", "D", "E")
NOISE_SCHEDULES = ("linear", "cosine")
JSCC_NORMS = ("gdn", "batchnorm")
DEVICES = ("auto", "cpu", "cuda")
START_MODES = ("gaussian", "mean", "inversion")  # diffusion receivers: x_T ~ N(0, I); mean of K; ORACLE
BF16_SETTINGS = ("false", "true", "auto")  # auto: on where the device computes bf16 natively
SPACINGS = ("leading", "trailing", "quadratic")  # sampling timesteps: strided from t = 0 (DDIM's, never T−1);
# strided down from t = T−1; or from T−1 to 0, dense near t = 0 (see diffusion/respace.py)
FROM_PURE_NOISE_SPACINGS = ("trailing", "quadratic")  # start at t = T−1 (ᾱ ≈ 0): not for epsilon models,
# whose x̂_0 = (x − √(1−ᾱ)·ε̂)/√ᾱ divides by √ᾱ (5e-5 on the cosine schedule) and saturates at ±1 there
SAMPLERS = ("auto", "ddim", "dpm++2m", "ddpm")  # auto: DPM-Solver++(2M) at <= FEW_STEPS evaluations, else DDIM;
# ddpm: ancestral sampling with the learned variance (learn_sigma; else β_t)
FEW_STEPS = 8
SPREAD_SCALE = 4  # spread maps of K samples (whole_image.spread_image): PNG level = 4 x std in 8-bit levels

RETIRED_KEYS = {  # accepted when empty (old configs and checkpoints), an error otherwise
    "timestep_respacing": "sampling uses sample_steps (grids) or --steps (sample, evaluate, transmit) DDIM steps",
}
ARCHITECTURE_KEYS = (  # what a checkpoint's weights depend on: resuming or loading under others is refused
    "mode", "encoder", "image_size", "c_out", "latent_dim", "num_channels", "channel_mult", "num_res_blocks",
    "attention_resolutions", "num_heads", "learn_sigma", "prediction", "diffusion_steps", "noise_schedule",
    "class_cond", "jscc_num_filters", "jscc_norm", "conditioning", "residual_scale", "snr_adaptive")


@dataclass
class Config:
    """All parameters of one experiment. Field comments are the documentation of the YAML keys."""

    # --- what to train -------------------------------------------------------------------
    mode: str = "joint"  # jscc | joint (Encdiffusion) | frozen (Condiffusion) | unconditional
    encoder: str = "jscc"  # jscc | half_unet: the transmitter's encoder in joint mode
    jscc_encoder_path: str = ""  # frozen mode: checkpoint of a `mode: jscc` run, or a shipped model's name
    init_from: str = ""  # start from this checkpoint's (EMA) weights or a shipped model's: a further stage of
    # training (fine-tuning); AdamW, the learning-rate schedule and the EMA start afresh

    # --- data and outputs ----------------------------------------------------------------
    data_dir: str = "data/cifar_train"
    test_dir: str = ""  # optional held-out folder for sample grids
    log_dir: str = "runs/default"
    seed: int = 0
    num_workers: int = 0
    strict_data: bool = False  # a corrupt image in data_dir is an error, not a skipped file
    crop_size: int = 0  # > 0: train on random crop_size x crop_size crops (and flips) of images of any size
    # (photos) instead of whole images of exactly image_size; any multiple of 4 in mode jscc (fully
    # convolutional), image_size in the diffusion modes (a fixed-size UNet)

    # --- image and JSCC encoder ------------------------------------------------------------
    image_size: int = 32
    c_out: int = 8  # JSCC latent channels at (image_size/4)^2 positions
    latent_dim: int = 512  # real channel symbols per image = c_out * (image_size/4)^2
    jscc_num_filters: int = 64
    jscc_norm: str = "gdn"  # gdn | batchnorm

    # --- channel ---------------------------------------------------------------------------
    channel: str = "awgn"  # awgn | rayleigh_block | rayleigh_fast | sionna_tdl | none
    snr_db: float = 10.0  # evaluation SNR, and training SNR when snr_range is empty
    snr_range: list[float] = field(default_factory=list)  # [lo, hi]: per-sample training SNR
    csi: bool = True  # fading: the receiver knows h and equalises (see equalizer); false: it gets h·s + n
    equalizer: str = "mmse"  # csi: mmse (conj(h)·y/(|h|² + σ²)) | zf (y/h, the only one before this key)
    tdl_model: str = "A"  # sionna_tdl: 3GPP TR 38.901 TDL profile A..E (pip install 'diffjscc[sionna]')
    tdl_delay_spread_ns: float = 100.0  # sionna_tdl: RMS delay spread
    tdl_speed_mps: float = 0.0  # sionna_tdl: receiver speed (Doppler)

    # --- receiver conditioning and SNR adaptation ----------------------------------------
    conditioning: str = "embed"  # embed (original) | spatial | residual: how the UNet sees y
    residual_scale: float = 0.5  # residual: the diffusion generates (x − x̂_DeepJSCC) / residual_scale
    snr_adaptive: bool = False  # the channel SNR conditions the receivers (ADJSCC-style): one model, all SNRs
    snr_feedback: bool = True  # snr_adaptive: the SNR is fed back to the transmitter's encoder too
    condition_dropout: float = 0.0  # training: share of images whose y (and x̂) the UNet does not see, so
    # that it also learns the unconditional prediction that classifier-free guidance (--guidance) needs

    # --- conditional UNet (diffusers UNet2DModel) -----------------------------------------
    num_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    num_res_blocks: int = 3
    attention_resolutions: list[int] = field(default_factory=lambda: [16, 8])
    num_heads: int = 4  # attention heads at the first (highest-resolution) attention level; diffusers keeps that
    # level's head width (its width / num_heads) in every attention layer, so a level k times wider has k·num_heads
    # heads, the middle block too (diffusion/unet.py). Every shipped model and config: num_heads at every level
    dropout: float = 0.3
    use_scale_shift_norm: bool = True
    class_cond: bool = False
    num_classes: int = 10

    # --- Gaussian diffusion ----------------------------------------------------------------
    diffusion_steps: int = 4000
    noise_schedule: str = "cosine"  # linear | cosine
    learn_sigma: bool = True  # learned variance trained with the hybrid loss (L_simple + λ·L_vlb)
    prediction: str = "epsilon"  # what the UNet predicts: epsilon (original) | x0 | v = √ᾱ·ε − √(1−ᾱ)·x0
    vlb_weight: float = 0.001  # λ of the hybrid loss (Nichol & Dhariwal 2021)
    sample_steps: int = 50  # sampling steps of the sample grids written during training
    sample_spacing: str = "leading"  # leading (never t = T−1) | trailing (ends at T−1) | quadratic (T−1 to 0)

    # --- optimisation ----------------------------------------------------------------------
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_rate: float = 0.9999
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    total_steps: int = 100000  # the original's lr_anneal_steps
    lr_anneal: bool = True  # linear decay of lr to 0 at total_steps, as the original
    bf16: str = "false"  # bf16 autocast of forward passes: false | true | auto (on with native bf16: GPU, AVX512-BF16/AMX CPU)
    fused_adamw: bool = True  # the same AdamW update in one kernel: 2-5x faster optimizer step (bench train-step)
    channels_last: bool = False  # NHWC weights/activations: 4-13% slower on CPU (bench train-step); try on GPUs
    compile: bool = False  # torch.compile the UNet in place: 4 min of compiling, no faster on CPU (bench train-step)
    device: str = "auto"  # auto | cpu | cuda

    # --- bookkeeping -----------------------------------------------------------------------
    log_interval: int = 10
    save_interval: int = 10000
    sample_interval: int = 0  # 0: a grid only at the end
    keep_checkpoints: int = 3

    # ------------------------------------------------------------------------------------------
    @property
    def latent_size(self) -> int:
        """Side of the latent feature map: the JSCC encoder downsamples by 4."""
        return self.image_size // 4

    @property
    def has_encoder(self) -> bool:
        return self.mode != "unconditional"

    @property
    def has_diffusion(self) -> bool:
        return self.mode != "jscc"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Check every value; raises UserError naming the first bad key."""
        _choice("mode", self.mode, MODES)
        _choice("encoder", self.encoder, ENCODERS)
        _choice("channel", self.channel, CHANNELS)
        _choice("equalizer", self.equalizer, EQUALIZERS)
        _choice("noise_schedule", self.noise_schedule, NOISE_SCHEDULES)
        _choice("prediction", self.prediction, PREDICTIONS)
        _choice("jscc_norm", self.jscc_norm, JSCC_NORMS)
        _choice("device", self.device, DEVICES)
        _choice("conditioning", self.conditioning, CONDITIONINGS)
        _choice("tdl_model", self.tdl_model, TDL_MODELS)
        _choice("sample_spacing", self.sample_spacing, SPACINGS)
        if self.has_diffusion and self.prediction == "epsilon" and self.sample_spacing in FROM_PURE_NOISE_SPACINGS:
            raise UserError(f"config key 'sample_spacing' is '{self.sample_spacing}', which starts at t = T-1 where "
                            f"an epsilon model's x0 estimate divides by sqrt(alpha_bar) ~ 0: use leading, or "
                            f"prediction v or x0")
        _choice("bf16", self.bf16, BF16_SETTINGS)
        for key in ("image_size", "c_out", "latent_dim", "jscc_num_filters", "num_channels",
                    "num_res_blocks", "num_heads", "num_classes", "diffusion_steps",
                    "sample_steps", "batch_size", "total_steps", "log_interval",
                    "save_interval", "keep_checkpoints"):
            if getattr(self, key) <= 0:
                raise UserError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        for key in ("num_workers", "sample_interval", "weight_decay", "grad_clip", "vlb_weight"):
            if not getattr(self, key) >= 0:  # also rejects NaN
                raise UserError(f"config key '{key}' must be >= 0, got {getattr(self, key)}")
        if self.crop_size < 0 or self.crop_size % 4:
            raise UserError(f"config key 'crop_size' must be 0 (whole images) or a positive multiple of 4, "
                            f"got {self.crop_size}")
        if self.crop_size and self.mode != "jscc" and self.crop_size != self.image_size:
            raise UserError(f"config key 'crop_size' ({self.crop_size}) must equal image_size ({self.image_size}) in "
                            f"mode '{self.mode}': its UNet is fixed-size (only mode 'jscc' is fully convolutional)")
        if self.crop_size and self.crop_size < self.image_size:
            raise UserError(f"config key 'crop_size' ({self.crop_size}) must be at least image_size "
                            f"({self.image_size}), the block that latent_dim counts symbols for")
        if self.image_size % 4:
            raise UserError(f"config key 'image_size' must be divisible by 4, got {self.image_size}")
        expected = self.c_out * self.latent_size**2
        if self.latent_dim != expected:
            raise UserError(
                f"config key 'latent_dim' is {self.latent_dim} but the encoder produces "
                f"c_out*(image_size/4)^2 = {self.c_out}*{self.latent_size}^2 = {expected}"
            )
        if self.channel != "awgn" and self.channel != "none" and self.latent_dim % 2:
            raise UserError(f"config key 'latent_dim' must be even for the complex channel '{self.channel}'")
        for key in ("residual_scale", "tdl_delay_spread_ns"):
            if not getattr(self, key) > 0:
                raise UserError(f"config key '{key}' must be positive, got {getattr(self, key)}")
        if not self.tdl_speed_mps >= 0:
            raise UserError(f"config key 'tdl_speed_mps' must be >= 0, got {self.tdl_speed_mps}")
        for key in ("snr_db", "lr", "ema_rate", "dropout", "weight_decay", "grad_clip", "vlb_weight",
                    "residual_scale", "tdl_delay_spread_ns", "tdl_speed_mps"):
            if not math.isfinite(getattr(self, key)):
                raise UserError(f"config key '{key}' must be a finite number, got {getattr(self, key)}")
        if any(not math.isfinite(v) for v in self.snr_range):
            raise UserError(f"config key 'snr_range' must hold finite numbers, got {self.snr_range}")
        if self.snr_range:
            if len(self.snr_range) != 2:
                raise UserError(f"config key 'snr_range' must be [lo, hi], got {self.snr_range}")
            lo, hi = self.snr_range
            if lo > hi:
                raise UserError(f"config key 'snr_range' must be increasing [lo, hi], got [{lo}, {hi}]")
        if not 0.0 < self.lr < 1.0:
            raise UserError(f"config key 'lr' must be in (0, 1), got {self.lr}")
        if not 0.0 <= self.ema_rate < 1.0:
            raise UserError(f"config key 'ema_rate' must be in [0, 1), got {self.ema_rate}")
        for key in ("dropout", "condition_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:  # also rejects NaN
                raise UserError(f"config key '{key}' must be in [0, 1), got {getattr(self, key)}")
        if self.condition_dropout and self.mode == "unconditional":  # (mode jscc ignores it, as every diffusion key)
            raise UserError("config key 'condition_dropout' drops the received latent that a diffusion receiver "
                            "is conditioned on: mode 'unconditional' has none")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise UserError(f"config key 'channel_mult' must be a list of positive ints, got {self.channel_mult}")
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            raise UserError(
                f"config key 'channel_mult' has {len(self.channel_mult)} levels; image_size "
                f"{self.image_size} must be divisible by {2 ** (len(self.channel_mult) - 1)}"
            )
        resolutions = {self.image_size // 2**i for i in range(len(self.channel_mult))}
        for res in self.attention_resolutions:
            if res not in resolutions:
                raise UserError(
                    f"config key 'attention_resolutions' has {res}, not one of the UNet's "
                    f"resolutions {sorted(resolutions, reverse=True)}"
                )
        for mult in self.channel_mult:
            width = self.num_channels * mult
            if width % min(32, self.num_channels) or width % self.num_heads:
                raise UserError(
                    f"config key 'num_channels' ({self.num_channels}) times channel_mult ({mult}) "
                    f"must be divisible by the group-norm groups and num_heads ({self.num_heads})"
                )
        if self.mode == "frozen" and not self.jscc_encoder_path:
            raise UserError("config key 'jscc_encoder_path' is required in mode 'frozen' "
                            "(a checkpoint of a `mode: jscc` run)")
        if self.mode == "jscc" and self.encoder != "jscc":
            raise UserError("config key 'encoder' must be 'jscc' in mode 'jscc' (Deep JSCC pairs "
                            "the CNN encoder with its decoder)")
        # (mode jscc ignores the receiver keys, so that one config serves the base and its receiver)
        if self.conditioning != "embed" and self.mode == "unconditional":
            raise UserError(f"config key 'conditioning' is '{self.conditioning}', which conditions a diffusion "
                            f"receiver on y: mode 'unconditional' has none")
        if self.conditioning == "residual" and self.encoder != "jscc":
            raise UserError("config key 'conditioning' is 'residual', which needs the Deep JSCC decoder: "
                            "encoder must be 'jscc'")
        if self.snr_adaptive and self.mode == "unconditional":
            raise UserError("config key 'snr_adaptive' needs a channel: not in mode 'unconditional'")
        if self.snr_adaptive and self.snr_feedback and self.encoder == "half_unet":
            raise UserError("config key 'snr_feedback' must be false with encoder 'half_unet' (it has no SNR "
                            "input); the receiver still adapts to the SNR")
        if self.mode == "frozen" and self.encoder != "jscc":
            raise UserError("config key 'encoder' must be 'jscc' in mode 'frozen' (the frozen "
                            "encoder comes from a `mode: jscc` checkpoint)")
        return self


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"config key '{key}' must be one of {', '.join(allowed)}; got '{value}'")


_FIELD_TYPES = typing.get_type_hints(Config)


def _coerce(key: str, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise a one-line UserError."""
    target = _FIELD_TYPES[key]
    if key == "bf16" and isinstance(value, bool):  # true/false as every config before "auto" wrote it
        value = str(value).lower()
    origin = typing.get_origin(target)
    if origin is list:
        (item_type,) = typing.get_args(target)
        if isinstance(value, str):  # "16,8" as in the original YAML, or from --set
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        return [_scalar(key, v, item_type) for v in value]
    return _scalar(key, value, target)


def _scalar(key: str, value: Any, target: type) -> Any:
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise UserError(f"config key '{key}' must be true or false, got {value!r}")
    if target is int:
        if isinstance(value, bool):
            raise UserError(f"config key '{key}' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
            if number is not None and number.is_integer():
                return int(number)
        raise UserError(f"config key '{key}' must be an integer, got {value!r}")
    if target is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise UserError(f"config key '{key}' must be a number, got {value!r}")
    if target is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"config key '{key}' must be a string, got {value!r}")
    raise TypeError(f"unsupported config type {target} for {key}")  # programming error


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Build a validated Config from a mapping plus ``key=value`` overrides."""
    if not isinstance(raw, dict):
        raise UserError("config must be a YAML mapping of key: value")
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Config)}
    for key, value in raw.items():
        if key in RETIRED_KEYS and value in ("", None):  # as every checkpoint before its removal holds it
            continue
        if key in RETIRED_KEYS:
            raise UserError(f"config key '{key}' was removed: {RETIRED_KEYS[key]}")
        if key not in known:
            hint = _closest(str(key), known)
            raise UserError(f"unknown config key '{key}'" + (f" (did you mean '{hint}'?)" if hint else ""))
        values[key] = _coerce(key, value)
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'")
        key, text = item.split("=", 1)
        key = key.strip()
        if key in RETIRED_KEYS:
            raise UserError(f"config key '{key}' was removed: {RETIRED_KEYS[key]}")
        if key not in known:
            hint = _closest(key, known)
            raise UserError(f"unknown config key '{key}' in --set" + (f" (did you mean '{hint}'?)" if hint else ""))
        values[key] = _coerce(key, yaml.safe_load(text) if text.strip() else "")
    return Config(**values).validate()


def first_mismatch(saved: dict[str, Any], cfg: Config, keys: typing.Iterable[str]) -> tuple[str, Any] | None:
    """The first of ``keys`` on which a checkpoint's saved config dict disagrees with ``cfg``, with
    the saved value; a key newer than the checkpoint counts as its default. None when they agree."""
    for key in keys:
        trained_with = saved.get(key, getattr(_DEFAULTS, key))
        if trained_with != getattr(cfg, key):
            return key, trained_with
    return None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (safe loader) and apply ``--set key=value`` overrides.

    A bare name without suffix (``tiny``, ``cifar10``) that is not a file names a config
    shipped in the package.
    """
    path = Path(path)
    packaged = Path(__file__).parent / "configs" / f"{path.name}.yaml"
    if not path.is_file() and path.parent == Path(".") and path.suffix == "" and packaged.is_file():
        path = packaged  # `diffjscc train tiny` uses the config shipped in the package
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}") from None
    return config_from_dict(raw, overrides)


def _closest(key: str, known: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
    return matches[0] if matches else None


_DEFAULTS = Config()
