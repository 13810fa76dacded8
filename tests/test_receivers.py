"""The receiver registry (diffjscc.receivers): every entry runs on tiny real systems (the MICRO
networks of the CLI tests, untrained, on real CIFAR-10 test images), the source is an oracle's
privilege, each mode has the receivers it should, the mean row averages exactly the samples the
Gaussian row drew (in the sweep's noise order), and one new table entry is one new sweep row."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffjscc.config import START_MODES, load_config
from diffjscc.errors import UserError
from diffjscc.evaluation.grids import reconstruct_rows, write_training_grid
from diffjscc.evaluation.sweep import EvalModel, Protocol, run_protocol
from diffjscc.evaluation.transmit import transmit_image
from diffjscc.receivers import (
    RECEIVERS,
    Receiver,
    ReceiveContext,
    SourceAccessError,
    available,
    by_start,
    receive,
    require,
)
from diffjscc.system import TransmissionSystem

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
MICRO = ["num_channels=16", "channel_mult=[1,2]", "attention_resolutions=[16]", "num_res_blocks=1",
         "jscc_num_filters=16", "diffusion_steps=100", "sample_steps=2", "device=cpu"]
MODES = {  # name → overrides; frozen's encoder path is never read: the system is built, not trained
    "jscc": ["mode=jscc"],
    "frozen": ["mode=frozen", "jscc_encoder_path=unused.pt", "conditioning=residual", "prediction=v"],
    "joint": ["mode=joint", "conditioning=embed"],
    "joint_residual": ["mode=joint", "conditioning=residual"],
    "unconditional": ["mode=unconditional"],
}
STEPS = 2


def _system(name: str) -> TransmissionSystem:
    torch.manual_seed(0)
    return TransmissionSystem(load_config(TINY, [*MICRO, *MODES[name]])).eval()


@pytest.fixture(scope="module")
def systems() -> dict[str, TransmissionSystem]:
    return {name: _system(name) for name in MODES}


@pytest.fixture(scope="module")
def images(cifar_root: Path) -> torch.Tensor:
    from diffjscc.data import ImageFolderDataset

    return ImageFolderDataset(cifar_root / "cifar_test", image_size=32).first(3)[0]


def _received(system: TransmissionSystem, images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return system.transmit(images, snr_db=10.0, generator=torch.Generator().manual_seed(seed))


def _context(images: torch.Tensor, seed: int = 1, samples: int = 1) -> ReceiveContext:
    return ReceiveContext(snr_db=10.0, steps=STEPS, generator=torch.Generator().manual_seed(seed), samples=samples,
                          source=images)


def test_every_entry_runs_on_a_system_that_has_all_of_them(systems, images: torch.Tensor) -> None:
    system = systems["frozen"]
    assert available(system, controls=True) == list(RECEIVERS.values())
    assert available(system) == [r for r in RECEIVERS.values() if not r.control]
    received = _received(system, images)
    for receiver in RECEIVERS.values():
        out = receive(system, receiver, received, _context(images, samples=3))
        outputs = 3 if receiver.name in ("diffusion", "control_noise") else 1
        assert out.shape == (outputs, *images.shape), receiver.name
        assert torch.isfinite(out).all() and out.abs().max() <= 1, receiver.name


@pytest.mark.parametrize("mode, names", [
    ("jscc", ["deep_jscc"]),
    ("frozen", ["deep_jscc", "diffusion", "diffusion_mean", "diffusion_inversion"]),
    ("joint", ["diffusion", "diffusion_mean", "diffusion_inversion"]),
    ("joint_residual", ["deep_jscc", "diffusion", "diffusion_mean", "diffusion_inversion"]),
    ("unconditional", []),
])
def test_available_matches_each_mode(systems, mode: str, names: list[str]) -> None:
    system = systems[mode]
    assert [r.name for r in available(system)] == names
    for name in (r.name for r in RECEIVERS.values() if not r.control):
        if name in names:
            assert require(system, name).name == name
        else:
            with pytest.raises(UserError) as caught:
                require(system, name, hint="try another")
            message = str(caught.value)
            assert "\n" not in message
            if mode == "unconditional":
                assert message == "an unconditional checkpoint has no transmitter"
            else:
                part = "Deep JSCC decoder" if name == "deep_jscc" else "diffusion receiver"
                assert message == f"this '{system.cfg.mode}' checkpoint has no {part} (try another)"


def test_start_modes_name_the_diffusion_entries() -> None:
    assert [by_start(mode).start for mode in START_MODES] == list(START_MODES)
    assert {by_start(mode).family for mode in START_MODES} == {"diffusion"}
    with pytest.raises(UserError, match="unknown start mode 'sideways'"):
        by_start("sideways")


def test_oracle_entries_are_flagged_and_labelled() -> None:
    oracles = [r for r in RECEIVERS.values() if r.oracle]
    assert [r.name for r in oracles] == ["diffusion_inversion", "source", "control_noise"]
    for receiver in oracles:
        mark = "control" if receiver.control else "ORACLE"
        assert all(mark in text for text in (receiver.label, receiver.grid_label, receiver.note))
    assert [r.name for r in RECEIVERS.values() if r.control] == ["source", "control_noise"]
    for receiver in RECEIVERS.values():
        if not receiver.oracle:
            assert "ORACLE" not in receiver.label
    with pytest.raises(ValueError, match="must say ORACLE"):
        Receiver("peek", family="diffusion", label="peek", grid_label="peek", needs=("source",),
                 run=lambda system, received, context: context.source[None])
    with pytest.raises(ValueError, match="must say control"):
        Receiver("peek", family="diffusion", label="ORACLE peek", grid_label="ORACLE peek", note="ORACLE",
                 needs=("source",), control=True, run=lambda system, received, context: context.source[None])


def test_asking_for_the_controls_changes_no_other_output(systems, images: torch.Tensor) -> None:
    """The controls draw their noise last: every other receiver's output is the same with them."""
    system = systems["frozen"]
    received = _received(system, images)

    def outputs(receivers: list[Receiver]) -> dict[str, torch.Tensor]:
        context = _context(images, samples=2)
        return {r.name: receive(system, r, received, context) for r in receivers}

    plain = outputs(available(system))
    with_controls = outputs(available(system, controls=True))
    for name, value in plain.items():
        assert torch.equal(value, with_controls[name]), name
    assert torch.equal(with_controls["source"][0], images)


def test_a_non_oracle_receiver_cannot_read_the_source(systems, images: torch.Tensor) -> None:
    system = systems["frozen"]
    received = _received(system, images)
    peek = Receiver("peek", family="deep_jscc", label="peek", grid_label="peek", needs=("decoder",),
                    run=lambda system, received, context: context.source[None])
    context = _context(images)
    with pytest.raises(SourceAccessError, match="'peek' is not an oracle"):
        receive(system, peek, received, context)
    with pytest.raises(SourceAccessError):
        context.source  # outside any receiver
    inversion = RECEIVERS["diffusion_inversion"]
    assert receive(system, inversion, received, context).shape == (1, *images.shape)
    with pytest.raises(ValueError, match="ORACLE"):  # the oracle itself, given no source
        receive(system, inversion, received, ReceiveContext(snr_db=10.0, steps=STEPS))


def test_mean_is_the_pixel_mean_of_the_gaussian_samples_in_the_sweep_noise_order(systems, images) -> None:
    system = systems["frozen"]
    received = _received(system, images)
    K = 3
    context = _context(images, seed=5, samples=K)
    samples = receive(system, RECEIVERS["diffusion"], received, context)
    mean = receive(system, RECEIVERS["diffusion_mean"], received, context)
    inversion = receive(system, RECEIVERS["diffusion_inversion"], received, context)
    assert samples.shape[0] == K and not torch.equal(samples[0], samples[1])
    assert torch.equal(mean[0], samples.mean(0))
    # the same draws, in the same order, as K Gaussian-start runs then the inversion on one generator
    generator = torch.Generator().manual_seed(5)
    expected = [system.receive(received, steps=STEPS, start="gaussian", generator=generator, snr_db=10.0)
                for _ in range(K)]
    expected_inversion = system.receive(received, steps=STEPS, start="inversion", source=images,
                                        generator=generator, snr_db=10.0)
    assert torch.equal(samples, torch.stack(expected)) and torch.equal(inversion[0], expected_inversion)
    # the mean alone draws those same K samples
    alone = receive(system, RECEIVERS["diffusion_mean"], received, _context(images, seed=5, samples=K))
    assert torch.equal(alone, mean)
    # another batch (another received latent) in the same context is not served stale samples
    other = _received(system, images, seed=9)
    assert not torch.equal(receive(system, RECEIVERS["diffusion"], other, context), samples)


def test_grids_are_built_from_registry_entries(systems, images: torch.Tensor, tmp_path: Path) -> None:
    def names(system: TransmissionSystem, **kwargs) -> list[str]:
        rows, labels = reconstruct_rows(system, images, None, steps=STEPS, generator=torch.Generator().manual_seed(0),
                                        **kwargs)
        assert len(rows) == len(labels) and all(row.shape == images.shape for row in rows)
        return labels

    assert names(systems["frozen"]) == ["source", "Deep JSCC", f"diffusion {STEPS}"]
    assert names(systems["jscc"]) == ["source", "Deep JSCC"]
    assert names(systems["joint"]) == ["source", "received y", f"diffusion {STEPS}"]
    assert names(systems["unconditional"]) == ["source", f"diffusion {STEPS}"]  # generated from the prior
    assert names(systems["frozen"], receivers=("diffusion_inversion",)) == ["source", f"ORACLE inversion {STEPS}"]
    # the Deep JSCC row is the registry's output: the clamped decoder output of the same received latent
    system = systems["frozen"]
    rows, _ = reconstruct_rows(system, images, None, steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rows[1], system.decode(_received(system, images)).clamp(-1, 1))
    write_training_grid(systems["unconditional"], images, None, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_transmit_picks_and_checks_receivers_in_the_registry(systems, images: torch.Tensor) -> None:
    image = images[0]
    assert transmit_image(systems["jscc"], image, 10.0, "awgn", steps=STEPS).receiver == "deep_jscc"
    assert transmit_image(systems["frozen"], image, 10.0, "awgn", steps=STEPS).receiver == "diffusion"
    with pytest.raises(UserError, match=r"^this 'jscc' checkpoint has no diffusion receiver \(use --receiver "
                                        r"deep_jscc\)$"):
        transmit_image(systems["jscc"], image, 10.0, "awgn", receiver="diffusion")
    with pytest.raises(UserError, match="no Deep JSCC decoder"):
        transmit_image(systems["joint"], image, 10.0, "awgn", receiver="deep_jscc")
    with pytest.raises(UserError, match="no transmitter"):
        transmit_image(systems["unconditional"], image, 10.0, "awgn")


def test_one_new_entry_is_one_new_sweep_row(systems, cifar_root: Path, monkeypatch) -> None:
    """A control receiver ("Deep JSCC output plus noise") added to the table is scored by the
    sweep on every model that has its parts, beside the others, without touching the sweep."""

    def noisy_deep_jscc(system, received, context):
        clean = system.decode(received, context.snr_db).clamp(-1, 1)
        noise = torch.randn(clean.shape, generator=context.generator)
        return (clean + 0.1 * noise).clamp(-1, 1)[None]

    control = Receiver("deep_jscc_noise", family="deep_jscc_noise", label="Deep JSCC + noise (control)",
                       grid_label="Deep JSCC + noise", needs=("decoder",), run=noisy_deep_jscc)
    monkeypatch.setitem(RECEIVERS, control.name, control)
    models = [EvalModel(mode, Path(f"{mode}.pt"), systems[mode]) for mode in ("jscc", "joint")]
    lines: list[str] = []
    document = run_protocol(models, cifar_root / "cifar_test", Protocol(snrs=[10.0], steps=STEPS, limit=4),
                            progress=False, echo=lines.append)
    rows = [(r["model"], r["system"], r["receiver"], r["start"], r["oracle"]) for r in document["results"]]
    assert rows == [("jscc", "Deep JSCC", "deep_jscc", "-", False),
                    ("jscc", "Deep JSCC + noise (control)", "deep_jscc_noise", "-", False),
                    ("joint", "diffusion", "diffusion", "gaussian", False)]
    assert any(line.startswith("deep_jscc_noise: PSNR") for line in lines)
