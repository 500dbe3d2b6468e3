"""Which input channel is the ADC map and which the ZADC map: the one rule every stage uses.

A dataset names its channels in ``dataset.json`` (``{"0": "ADC", "1": "ZADC"}`` for BONBID). A channel
*is* the ADC (or ZADC) map when its name equals ``ADC`` (or ``ZADC``), ignoring case and ``_``/``-``/space
(``Z_ADC`` is ZADC); the position of
a channel decides nothing. :func:`channel_index` answers for one name, :func:`adc_zadc_channels` for both.

The brain is the non-zero voxels of the skull-stripped ADC map (BONBID's ``1ADC_ss``);
:func:`brain_channel` says which channel that is (the first one for a dataset without an ADC channel,
whose images are then expected to be zero outside the brain).
"""

from __future__ import annotations

from typing import Sequence

from hiennu.errors import HiennuError

ADC = "ADC"
ZADC = "ZADC"


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in "_- ")


def channel_index(channel_names: Sequence[str], wanted: str) -> int | None:
    """Index of the channel called ``wanted``, ignoring case and the separators ``_``, ``-`` and spaces
    (``Z_ADC``, BONBID's own folder name, is ``ZADC``), else None."""
    keys = [_key(c) for c in channel_names]
    return keys.index(_key(wanted)) if _key(wanted) in keys else None


def brain_channel(channel_names: Sequence[str]) -> int:
    """Index of the channel whose non-zero voxels are the brain: the ADC channel, else channel 0."""
    adc = channel_index(channel_names, ADC)
    return 0 if adc is None else adc


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
