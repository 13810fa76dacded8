"""JSCC encoders (image -> latent of real channel symbols) and the Deep JSCC decoder."""

from diffjscc.encoders.deep_jscc import NORM_KINDS, JSCCDecoder, JSCCEncoder, latent_shape
from diffjscc.encoders.gdn import GDN, IGDN, LowerBound, NonNegativeParametrizer, lower_bound
from diffjscc.encoders.half_unet import HalfUNetEncoder, group_count
from diffjscc.encoders.snr_attention import SNRAttention, snr_vector

__all__ = [
    "GDN",
    "IGDN",
    "NORM_KINDS",
    "HalfUNetEncoder",
    "JSCCDecoder",
    "JSCCEncoder",
    "LowerBound",
    "NonNegativeParametrizer",
    "SNRAttention",
    "group_count",
    "latent_shape",
    "lower_bound",
    "snr_vector",
]
