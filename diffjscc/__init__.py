"""diffjscc: wireless image transmission with diffusion models and joint source-channel coding.

The package follows one transmission: ``data`` (images) -> ``encoders`` (JSCC encoder) ->
``channel`` (power normalisation, AWGN / fading) -> ``diffusion`` (conditional UNet,
schedule, samplers) -> ``training`` (one trainer for every mode) -> ``evaluation``
(metrics, figures) -> ``cli``.
"""

__version__ = "0.1.0"
