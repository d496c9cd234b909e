"""The audio formats of the realtime wire: pcm16 at 24 kHz and G.711 mu-law / A-law at 8 kHz.

One :class:`AudioFormat` per format knows its sample rate, its GA and beta names, and how to turn base64
into int16 samples at its own rate and back. Resampling to and from the engines' rates is done by the
callers with streaming resamplers, so a format change between turns only swaps the object.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from localrt.audio import g711, pcm
from localrt.errors import InvalidRequest

FormatName = Literal["pcm16", "g711_ulaw", "g711_alaw"]


@dataclass(frozen=True)
class AudioFormat:
    name: FormatName  # the beta name
    ga_type: str  # the GA ``format.type``
    rate: int
    bytes_per_sample: int
    _decode: Callable[[bytes], np.ndarray]
    _encode: Callable[[np.ndarray], bytes]

    def decode(self, b64: str, *, param: str = "audio") -> np.ndarray:
        """base64 in this format -> int16 samples at :attr:`rate`; bad input is the client's error."""
        data = pcm.b64_to_bytes(b64, param=param)
        if self.bytes_per_sample == 2:
            return pcm.bytes_to_int16(data, param=param)
        return self._decode(data)

    def decode_chunks(self, b64: str, *, param: str = "audio", chunk: int = 1 << 15) -> Iterator[np.ndarray]:
        """:meth:`decode` in int16 pieces of at most ``chunk`` samples.

        The base64 is decoded and checked whole before the first piece (bad input yields nothing), but no
        full-length sample array is built: a 15 MiB append costs its bytes plus one piece at a time.
        """
        data = pcm.b64_to_bytes(b64, param=param)
        if len(data) % self.bytes_per_sample:
            raise InvalidRequest(
                f"16-bit PCM audio must have an even number of bytes, got {len(data)}.", param=param
            )
        view = memoryview(data)
        step = chunk * self.bytes_per_sample
        for start in range(0, len(data), step):
            yield self._decode(bytes(view[start : start + step]))

    def encoded_chars(self, n_samples: int) -> int:
        """The length of the base64 of ``n_samples`` samples in this format."""
        return (n_samples * self.bytes_per_sample + 2) // 3 * 4

    def encode(self, samples: np.ndarray) -> str:
        """int16 samples at :attr:`rate` -> base64 in this format."""
        return base64.b64encode(self._encode(samples)).decode("ascii")

    def max_samples(self, max_b64_chars: int) -> int:
        """How many samples fit in a base64 string of at most ``max_b64_chars`` characters."""
        return (max_b64_chars * 3 // 4) // self.bytes_per_sample

    def ga(self) -> dict[str, Any]:
        return {"type": self.ga_type, "rate": self.rate} if self.name == "pcm16" else {"type": self.ga_type}


PCM16 = AudioFormat("pcm16", "audio/pcm", 24000, 2, pcm.bytes_to_int16, pcm.int16_to_bytes)
G711_ULAW = AudioFormat(
    "g711_ulaw", "audio/pcmu", 8000, 1, g711.ulaw_decode, lambda x: g711.ulaw_encode(x).tobytes()
)
G711_ALAW = AudioFormat(
    "g711_alaw", "audio/pcma", 8000, 1, g711.alaw_decode, lambda x: g711.alaw_encode(x).tobytes()
)

BY_NAME: dict[str, AudioFormat] = {f.name: f for f in (PCM16, G711_ULAW, G711_ALAW)}
BY_GA_TYPE: dict[str, AudioFormat] = {f.ga_type: f for f in (PCM16, G711_ULAW, G711_ALAW)}
