"""diffjscc.channel_sionna without Sionna: a one-line UserError, and checks that need no Sionna.

Runs everywhere, with or without the ``sionna`` extra; Sionna's absence, or a stand-in
package, is simulated so the tests mean the same where it is installed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import diffjscc.channel_sionna as channel_sionna
from diffjscc.errors import UserError


@pytest.fixture
def no_sionna(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every ``import sionna…`` fail as if the package were not installed.

    A ``None`` entry in ``sys.modules`` makes an import raise ``ModuleNotFoundError``; the
    submodules get one too, since a cached ``sionna.phy.channel`` would otherwise be found.
    The module's cache of the imported classes is cleared for the same reason.
    """
    for name in [n for n in sys.modules if n == "sionna" or n.startswith("sionna.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "sionna", None)
    monkeypatch.setattr(channel_sionna, "_sionna", None)


def test_missing_sionna_is_one_line_user_error(no_sionna: None) -> None:
    for make in (channel_sionna.SionnaTDLChannel, channel_sionna.build_sionna_channel):
        with pytest.raises(UserError) as info:
            make()
        assert str(info.value) == (
            "channel 'sionna_tdl' needs the optional Sionna package: pip install 'diffjscc[sionna]'"
        )
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_options_are_checked_before_importing_sionna(no_sionna: None) -> None:
    with pytest.raises(UserError, match="unknown sionna_tdl option.*'tdl_model'"):
        channel_sionna.build_sionna_channel(tdl_model="A")
    with pytest.raises(UserError, match="TDL model must be one of A, B, C, D, E"):
        channel_sionna.build_sionna_channel(model="F")
    with pytest.raises(UserError, match="fft_size"):
        channel_sionna.build_sionna_channel(fft_size=0)
    with pytest.raises(UserError, match="UE speed"):
        channel_sionna.build_sionna_channel(speed_mps=-1.0)


def test_module_import_does_not_import_sionna(no_sionna: None) -> None:
    """A fresh copy of the module loads while every ``import sionna`` would fail."""
    spec = importlib.util.spec_from_file_location("_channel_sionna_copy", channel_sionna.__file__)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


# A stand-in for Sionna whose import re-seeds torch's global RNG, as ``import sionna.phy`` does.
_FAKE_SIONNA = {
    "sionna/__init__.py": "",
    "sionna/phy/__init__.py": "import torch\ntorch.default_generator.seed()\n",
    "sionna/phy/channel/__init__.py":
        "class ApplyOFDMChannel: pass\nclass GenerateOFDMChannel: pass\n",
    "sionna/phy/channel/tr38901/__init__.py": "class TDL: pass\n",
    "sionna/phy/ofdm/__init__.py": "class ResourceGrid: pass\n",
}


@pytest.fixture
def fake_sionna(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put the stand-in package first on ``sys.path``; afterwards drop every ``sionna…``
    module it left in ``sys.modules`` and restore the real ones (if any were imported)."""
    for rel, text in _FAKE_SIONNA.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    saved = {n: m for n, m in sys.modules.items() if n == "sionna" or n.startswith("sionna.")}
    for name in saved:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(channel_sionna, "_sionna", None)
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n == "sionna" or n.startswith("sionna.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_constructing_keeps_torch_global_rng(fake_sionna: None) -> None:
    """The lazy import restores torch's global RNG state, which importing Sionna re-seeds."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    channel_sionna.SionnaTDLChannel()
    assert "sionna.phy" in sys.modules  # the stand-in was really imported
    assert torch.equal(torch.rand(4), expected)
