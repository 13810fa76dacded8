"""The practical digital baseline: QAM against closed-form bit error rates, the 5G LDPC waterfall,
frames that never use more channel uses than the JSCC system, bit-exact delivery above the top
MCS's threshold, block-fading outage, and header accounting, on real CIFAR-10 images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("sionna")

from diffjscc.errors import UserError  # noqa: E402
from diffjscc.evaluation.codecs import CODECS, QualitySearch, codec_available, decode_image, require_codec  # noqa: E402
from diffjscc.evaluation.digital import LdpcLink, simulate_image  # noqa: E402
from diffjscc.evaluation.link import (  # noqa: E402
    MCS_TABLE,
    BlerCurve,
    LdpcChain,
    check_digital_channel,
    frame_for,
    qam_llrs,
)

AVAILABLE = [name for name in CODECS if codec_available(name)]


@pytest.fixture(autouse=True)
def _bler_cache(tmp_path_factory, monkeypatch) -> None:
    """One BLER cache for the session (never the user's): each curve is measured once."""
    monkeypatch.setenv("DIFFJSCC_BLER_CACHE", str(tmp_path_factory.getbasetemp() / "bler_tests"))


def _q(x: float) -> float:
    return 0.5 * math.erfc(x / math.sqrt(2))


def _uncoded_ber(bits_per_symbol: int, channel: str, snr_db: float, n_bits: int = 200_000) -> float:
    from sionna.phy.mapping import Demapper, Mapper

    generator = torch.Generator().manual_seed(11)
    bits = torch.randint(0, 2, (1, n_bits), generator=generator).float()
    symbols = Mapper("qam", bits_per_symbol)(bits)
    llr = qam_llrs(symbols, channel, snr_db, Demapper("app", "qam", bits_per_symbol), generator)
    return float(((llr > 0).float() != bits).float().mean())


@pytest.mark.parametrize("bits_per_symbol, snr_db", [(2, 0.0), (2, 4.0), (2, 8.0), (4, 6.0), (4, 10.0), (4, 14.0)])
def test_uncoded_qam_ber_on_awgn_matches_the_closed_form(bits_per_symbol: int, snr_db: float) -> None:
    """Gray QPSK: Q(sqrt(SNR)); Gray 16-QAM: 3/4 Q(a) + 1/2 Q(3a) - 1/4 Q(5a), a = sqrt(SNR/5)
    (SNR = Es/N0, the project's per-real-symbol SNR)."""
    snr = 10 ** (snr_db / 10)
    if bits_per_symbol == 2:
        closed = _q(math.sqrt(snr))
    else:
        a = math.sqrt(snr / 5)
        closed = 0.75 * _q(a) + 0.5 * _q(3 * a) - 0.25 * _q(5 * a)
    measured = _uncoded_ber(bits_per_symbol, "awgn", snr_db)
    assert measured == pytest.approx(closed, rel=0.10), (measured, closed)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_uncoded_qpsk_on_fast_rayleigh_with_csi_matches_the_closed_form(snr_db: float) -> None:
    """Each QPSK bit is BPSK at gamma_b = |h|^2 SNR / 2: BER = 1/2 (1 - sqrt(g / (1 + g))), g = SNR/2."""
    g = 10 ** (snr_db / 10) / 2
    closed = 0.5 * (1 - math.sqrt(g / (1 + g)))
    assert _uncoded_ber(2, "rayleigh_fast", snr_db) == pytest.approx(closed, rel=0.10)


def test_ldpc_rate_half_qpsk_waterfall() -> None:
    """5G LDPC, QPSK, k = 1024, n = 2048, 20 BP iterations on AWGN: the measured waterfall (BLER
    50 %) is at Es/N0 = 1.0 dB (BLER 0.96 at 0.5 dB, 0.40 at 1.0 dB, 0.035 at 1.5 dB, 0 of 200 at 2.0 dB;
    the BI-AWGN limit of rate 1/2 is 0.19 dB). 1 dB above it: no error; 1 dB below: every codeword fails."""
    chain = LdpcChain("qpsk-1/2", 2048, 1024)
    generator = torch.Generator().manual_seed(5)
    assert chain.block_errors(100, "awgn", 2.0, generator) == 0
    assert chain.block_errors(40, "awgn", 0.0, generator) >= 38


@pytest.mark.parametrize("n_real", [512, 514, 1000, 2 * 24576, 2 * 98304 + 6])
def test_frames_never_use_more_channel_uses_than_the_jscc_system(n_real: int) -> None:
    for mcs in MCS_TABLE.values():
        frame = frame_for(mcs, n_real)
        assert frame.used_real <= n_real  # one complex QAM symbol = two real channel uses
        assert frame.codewords * frame.codeword_bits <= (n_real // 2) * mcs.bits_per_symbol
        assert frame.codeword_bits % mcs.bits_per_symbol == 0 and frame.codeword_bits <= 8192
        assert abs(frame.info_bits / frame.codeword_bits - mcs.code_rate) < 1e-2
        assert 8 * frame.budget_bytes <= frame.payload_bits < frame.codewords * frame.info_bits  # CRCs paid
        assert frame.codewords_for(frame.budget_bytes) <= frame.codewords
    assert frame_for("qpsk-1/2", 512).budget_bytes == (256 - 16) // 8  # one codeword, CRC16


def _search(cifar_images, name: str) -> QualitySearch:
    return QualitySearch(CODECS[name], cifar_images[:4])


def test_above_the_top_mcs_threshold_the_image_is_bit_exact_the_codec_output(cifar_images) -> None:
    name = "heif" if "heif" in AVAILABLE else "webp"
    search = _search(cifar_images, name)
    top = list(MCS_TABLE)[-1]
    link = LdpcLink(search, "awgn", 512, max_codewords=40)
    curve = link.curve(top)
    snr = curve.threshold_db(0.0) + 1.0  # above the last measured error
    frame = link.frame(top)
    assert link.frame_loss(top, snr) == 0.0
    outcome = link.deliver(top, snr, "payload")
    assert outcome.lost == 0
    chain = LdpcChain(top, frame.codeword_bits, frame.info_bits)
    generator = torch.Generator().manual_seed(2)
    for i in range(len(search.images)):
        step = search.fit(i, frame.budget_bytes, "payload")
        assert step is not None
        expected = search.decoded(i, step)
        assert np.array_equal(outcome.images[i], expected)  # the table's delivery
        received = simulate_image(search, i, step, frame, "awgn", snr, "payload", generator, chain)
        assert received is not None and np.array_equal(received, expected)  # the full chain's, bit for bit
    # far below the waterfall both the table and the full chain lose every image
    low = LdpcLink(search, "awgn", 512, max_codewords=40)
    assert low.deliver("16qam-1/2", -6.0, "payload").lost == len(search.images)
    weak = frame_for("16qam-1/2", 512)
    step = search.fit(0, weak.budget_bytes, "payload")
    assert step is not None
    assert simulate_image(search, 0, step, weak, "awgn", -6.0, "payload", generator) is None


def test_block_fading_loses_images_in_deep_fades_where_awgn_loses_none(cifar_images) -> None:
    snr, mcs, n = 14.0, "16qam-1/2", 1024  # 126 payload bytes: every WebP payload here fits
    search = QualitySearch(CODECS["webp"], cifar_images)
    assert all(search.fit(i, frame_for(mcs, n).budget_bytes, "payload") is not None for i in range(64))
    awgn = LdpcLink(search, "awgn", n, max_codewords=40)
    block = LdpcLink(search, "rayleigh_block", n, max_codewords=40)
    assert awgn.frame_loss(mcs, snr) == 0.0 and awgn.deliver(mcs, snr, "payload").lost == 0
    # outage: P(|h|^2 SNR below the waterfall T) = 1 - exp(-10^((T - SNR)/10)), T ~ 5.5..8.5 dB here
    predicted = block.frame_loss(mcs, snr)
    assert 1 - math.exp(-10 ** ((5.5 - snr) / 10)) < predicted < 1 - math.exp(-10 ** ((8.5 - snr) / 10))
    lost = block.deliver(mcs, snr, "payload").lost
    assert 0 < lost < 32
    # the same image sees the same fade at every MCS: a higher MCS loses more
    assert block.deliver("64qam-2/3", snr, "payload").lost > lost


def test_adaptive_picks_the_most_efficient_mcs_under_the_loss_target(cifar_images) -> None:
    """The rule alone, on stated curves (steps at 0, 5, 10 ... dB for the table's MCSs in order)."""
    link = LdpcLink(QualitySearch(CODECS["webp"], cifar_images[:2]), "awgn", 512)
    for index, name in enumerate(MCS_TABLE):
        frame = link.frame(name)
        link._curves[name] = BlerCurve(name, "awgn", frame.codeword_bits, frame.info_bits, 20, 100, 20, 0,
                                       [(5.0 * index - 0.5, 100, 100), (5.0 * index, 0, 100)])
    assert link.adaptive_mcs(-3.0) == "qpsk-1/4"  # nothing meets the target: the most robust
    assert link.adaptive_mcs(0.0) == "qpsk-1/4"
    assert link.adaptive_mcs(12.0) == "qpsk-3/4"  # its step is at 10 dB, 16qam-1/2's at 15
    assert link.adaptive_mcs(50.0) == list(MCS_TABLE)[-1]


@pytest.mark.parametrize("name", AVAILABLE)
def test_payload_and_file_accounting_differ_by_exactly_the_header_bytes(name: str, cifar_images) -> None:
    search = _search(cifar_images, name)
    last = len(CODECS[name].settings) - 1
    for i in range(len(search.images)):
        for step in (0, last // 2, last):
            encoded = search.encoded(i, step)
            assert encoded.size("file") - encoded.size("payload") == encoded.header_bytes > 0
            assert encoded.reassemble(encoded.payload, "payload") == encoded.data
            assert np.array_equal(decode_image(encoded.reassemble(encoded.payload, "payload")),
                                  search.decoded(i, step))
        for budget in (60, 200, 1000):  # a payload budget admits the file of a budget larger by its header
            step = search.fit(i, budget, "payload")
            if step is not None:
                header = search.encoded(i, step).header_bytes
                assert search.encoded(i, step).size("file") == search.encoded(i, step).size("payload") + header
                assert search.encoded(i, step).size("payload") <= budget


def test_heif_without_pillow_heif_is_one_line(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails as if not installed
    with pytest.raises(UserError, match="pip install 'diffjscc\\[heif\\]'"):
        require_codec("heif")


def test_channels_the_chain_cannot_model_are_refused() -> None:
    for kind in ("awgn", "rayleigh_block", "rayleigh_fast"):
        check_digital_channel(kind)
    with pytest.raises(UserError, match="cannot model channel 'sionna_tdl'"):
        check_digital_channel("sionna_tdl")
