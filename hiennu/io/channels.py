"""Which input channel is the ADC map and which the ZADC map: the one rule every stage uses.

A dataset names its channels in ``dataset.json`` (``{"0": "ADC", "1": "ZADC"}`` for BONBID). A channel
*is* the ADC (or ZADC) map when its name equals ``ADC`` (or ``ZADC``), ignoring case; the position of
a channel decides nothing. :func:`channel_index` answers for one name, :func:`adc_zadc_channels` for both.
"""

from __future__ import annotations

from typing import Sequence

from hiennu.errors import HiennuError

ADC = "ADC"
ZADC = "ZADC"


def channel_index(channel_names: Sequence[str], wanted: str) -> int | None:
    """Index of the channel called ``wanted`` (case-insensitive), else None."""
    lowered = [str(c).lower() for c in channel_names]
    return lowered.index(wanted.lower()) if wanted.lower() in lowered else None


def adc_zadc_channels(channel_names: Sequence[str], required: bool = False,
                      source: str = "the channels") -> tuple[int | None, int | None]:
    """``(index of ADC, index of ZADC)`` among ``channel_names`` (None where absent).

    required: raise :class:`HiennuError` naming ``source`` unless both are there.
    """
    adc, zadc = channel_index(channel_names, ADC), channel_index(channel_names, ZADC)
    if required and (adc is None or zadc is None):
        raise HiennuError(f"{source} must hold an {ADC} and a {ZADC} channel (named so in dataset.json), got "
                          f"{', '.join(map(str, channel_names)) or 'none'}")
    return adc, zadc
