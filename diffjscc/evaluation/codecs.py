"""The image codecs of the digital baseline, the quality search that fits a byte budget, and the
accounting of their headers.

Codecs (Pillow, plus the optional ``pillow-heif``): WebP, JPEG, JPEG 2000, AVIF (AV1 intra) and
HEIF with HEVC intra (``heif``, "BPG-like": BPG is HEVC intra in a smaller container; this is
libheif + x265, not Bellard's BPG). Each has a quality ladder, lowest first; file size grows with
quality, so the search is a bisection that returns the largest quality that fits.

Header accounting (:data:`HEADERS`), stated in every result row:

* ``file``: the whole file as Pillow writes it is sent.
* ``payload``: only the coded image data is sent; the receiver is assumed to know the rest
  (container boxes, marker segments — including, for JPEG, the quantisation and Huffman tables
  of the chosen quality, and any length fields). The split of one file:

  ========  ==============================================  ==========================
  codec     header (known to the receiver)                  payload (sent)
  ========  ==============================================  ==========================
  jpeg      SOI ... end of the SOS segment; EOI             entropy-coded scan
  jpeg2000  SOC + main header (SIZ, COD, QCD, ...); EOC     tile-parts from the 1st SOT
  webp      RIFF header + ``VP8 `` chunk header (20 bytes)  VP8 bitstream (+ pad byte)
  avif      ftyp, meta (av1C, iloc, ...), mdat box header   mdat content (AV1 OBUs)
  heif      ftyp, meta (hvcC with VPS/SPS/PPS, ...),         mdat content (HEVC slices)
            mdat box header
  ========  ==============================================  ==========================

  So ``file`` bytes = ``payload`` bytes + header bytes, exactly, for every file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features

from diffjscc.errors import UserError

__all__ = [
    "CODECS",
    "HEADERS",
    "Codec",
    "Encoded",
    "QualitySearch",
    "codec_available",
    "decode_image",
    "header_span",
    "require_codec",
]

HEADERS = ("file", "payload")
"""Header accounting: ``file`` sends the whole file, ``payload`` only the coded data."""

HEIF_MISSING = "codec heif needs the optional pillow-heif package: pip install 'diffjscc[heif]'"


def _register_heif() -> bool:
    """Make Pillow read and write HEIF through pillow-heif; False when it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


@dataclass(frozen=True)
class Codec:
    """A codec with a quality ladder, lowest quality first.

    ``settings`` are the values of the codec's quality knob from worst to best: ``quality`` for
    WebP/JPEG/AVIF/HEIF, the compression ratio (``quality_layers``, rates mode) for JPEG 2000.
    """

    name: str
    label: str
    pil_format: str
    feature: str  # Pillow feature name, or "pillow_heif" for the optional package
    settings: tuple[float, ...]
    options: dict = field(default_factory=dict)

    def encode(self, image: Image.Image, index: int) -> bytes:
        setting = self.settings[index]
        buffer = io.BytesIO()
        if self.pil_format == "JPEG2000":
            image.save(buffer, format="JPEG2000", quality_mode="rates", quality_layers=[setting], **self.options)
        else:
            image.save(buffer, format=self.pil_format, quality=int(setting), **self.options)
        return buffer.getvalue()


CODECS: dict[str, Codec] = {
    "webp": Codec("webp", "WebP", "WEBP", "webp", tuple(range(0, 101)), {"method": 6}),
    "jpeg": Codec("jpeg", "JPEG", "JPEG", "jpg", tuple(range(1, 101)), {"optimize": True}),
    # raw codestream (.j2k, no JP2 boxes), 9/7 wavelet, 3 resolution levels (32 -> 8 px)
    "jpeg2000": Codec("jpeg2000", "JPEG 2000", "JPEG2000", "jpg_2000",
                      tuple(float(r) for r in np.geomspace(400.0, 1.0, 64)),
                      {"irreversible": True, "no_jp2": True, "num_resolutions": 3}),
    "avif": Codec("avif", "AVIF", "AVIF", "avif", tuple(range(0, 101)), {}),
    # HEVC intra (x265 through libheif), 4:2:0 as BPG's default
    "heif": Codec("heif", "HEIF/HEVC (BPG-like)", "HEIF", "pillow_heif", tuple(range(0, 101)), {}),
}
"""The codecs of the baseline, by CLI name. Quality ladders: WebP 0..100 (method 6), JPEG
1..100 (optimised Huffman tables), JPEG 2000 compression ratio 400 -> 1 (64 log steps), AVIF
0..100, HEIF 0..100 (optional ``pillow-heif``)."""


def codec_available(name: str) -> bool:
    """Whether ``name`` can be written here (AVIF needs Pillow >= 11.3 with libavif, HEIF pillow-heif)."""
    codec = CODECS[name]
    if codec.feature == "pillow_heif":
        return _register_heif()
    return features.check(codec.feature) is True


def require_codec(name: str) -> Codec:
    """The codec, or a one-line error saying why it cannot be used here."""
    if name not in CODECS:
        raise UserError(f"unknown codec {name!r}; expected {', '.join(CODECS)}")
    if not codec_available(name):
        raise UserError(HEIF_MISSING if name == "heif" else f"codec {name}: this Pillow build cannot write it")
    return CODECS[name]


# --------------------------------------------------------------------------- header accounting
def _jpeg_span(data: bytes) -> tuple[int, int]:
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: the entropy-coded data follows its segment
            return pos + 2 + length, 2  # ... up to EOI
        pos += 2 + length
    raise ValueError("no start-of-scan marker in JPEG data")


def _j2k_span(data: bytes) -> tuple[int, int]:
    pos = 2  # after SOC
    while pos + 4 <= len(data):
        marker = int.from_bytes(data[pos:pos + 2], "big")
        if marker == 0xFF90:  # first start-of-tile: the main header ends here
            return pos, 2  # ... payload up to EOC
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    raise ValueError("no SOT marker in JPEG 2000 codestream")


def _webp_span(data: bytes) -> tuple[int, int]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or data[12:16] not in (b"VP8 ", b"VP8L"):
        raise ValueError("not a simple-format WebP file")
    size = int.from_bytes(data[16:20], "little")
    return 20, len(data) - 20 - size  # the suffix is the RIFF pad byte of an odd chunk, if any


def _isobmff_span(data: bytes) -> tuple[int, int]:
    pos = 0
    while pos + 8 <= len(data):
        size, kind, head = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8], 8
        if size == 1:
            size, head = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            return pos + head, len(data) - (pos + size)
        pos += size
    raise ValueError("no mdat box in HEIF/AVIF file")


_SPANS = {"JPEG": _jpeg_span, "JPEG2000": _j2k_span, "WEBP": _webp_span, "AVIF": _isobmff_span,
          "HEIF": _isobmff_span}


def header_span(codec: Codec, data: bytes) -> tuple[int, int]:
    """(prefix, suffix) byte counts of the header around the payload ``data[prefix:len - suffix]``."""
    return _SPANS[codec.pil_format](data)


@dataclass(frozen=True)
class Encoded:
    """One encoded file and its split into header (known to a ``payload`` receiver) and payload."""

    data: bytes
    prefix: int
    suffix: int

    @property
    def payload(self) -> bytes:
        return self.data[self.prefix:len(self.data) - self.suffix]

    @property
    def header_bytes(self) -> int:
        return self.prefix + self.suffix

    def size(self, header: str) -> int:
        """Bytes sent under ``header`` accounting."""
        return len(self.data) if header == "file" else len(self.data) - self.header_bytes

    def sent(self, header: str) -> bytes:
        return self.data if header == "file" else self.payload

    def reassemble(self, received: bytes, header: str) -> bytes:
        """The file the receiver decodes: the bytes received, with the known header around a payload."""
        if header == "file":
            return received
        return self.data[:self.prefix] + received + self.data[len(self.data) - self.suffix:]


def decode_image(data: bytes) -> np.ndarray:
    """uint8 (H, W, 3) of an encoded file."""
    with Image.open(io.BytesIO(data)) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8)


class QualitySearch:
    """One codec on a fixed set of uint8 (N, H, W, 3) images: encodings and decodings per (image,
    quality step) memoised, and the largest quality that fits a budget under either accounting.

    Whatever :meth:`fit` returns was measured to fit, so a file (or payload) never exceeds the budget.
    """

    def __init__(self, codec: Codec, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
        if codec.feature == "pillow_heif" and not _register_heif():
            raise UserError(HEIF_MISSING)
        self.codec = codec
        self.images = images
        self._pil = [Image.fromarray(im) for im in images]
        self._files: dict[tuple[int, int], Encoded] = {}
        self._decoded: dict[tuple[int, int], np.ndarray] = {}
        self.mean_colour = np.round(images.reshape(-1, 3).astype(np.float64).mean(axis=0)).astype(np.uint8)

    def encoded(self, i: int, step: int) -> Encoded:
        key = (i, step)
        if key not in self._files:
            data = self.codec.encode(self._pil[i], step)
            self._files[key] = Encoded(data, *header_span(self.codec, data))
        return self._files[key]

    def decoded(self, i: int, step: int) -> np.ndarray:
        """The codec's own output for image ``i`` at ``step`` (what an error-free link delivers)."""
        key = (i, step)
        if key not in self._decoded:
            self._decoded[key] = decode_image(self.encoded(i, step).data)
        return self._decoded[key]

    def fit(self, i: int, budget: int, header: str = "file") -> int | None:
        """Largest quality step of image ``i`` with at most ``budget`` bytes sent; None if none fits."""
        size = lambda step: self.encoded(i, step).size(header)  # noqa: E731
        lo, hi = 0, len(self.codec.settings) - 1
        if size(lo) > budget:
            return None
        if size(hi) <= budget:
            return hi
        while hi - lo > 1:  # invariant: lo fits, hi does not
            mid = (lo + hi) // 2
            if size(mid) <= budget:
                lo = mid
            else:
                hi = mid
        return lo
