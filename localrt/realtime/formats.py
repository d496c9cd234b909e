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

# Samples per decoded piece: 2 s of pcm16 at 24 kHz, 6 s of G.711. A multiple of 3, so every piece is a
# whole number of base64 quanta (4 characters per 3 bytes) in both sample sizes.
PIECE_SAMPLES = 3 << 14


def b64_pieces(b64: str, piece_chars: int, *, param: str = "audio") -> list[bytes]:
    """Strict base64 (as :func:`~localrt.audio.pcm.b64_to_bytes`) decoded in pieces of ``piece_chars``.

    One ``b64decode`` of 15 MiB is a single C call of ~60 ms that holds the GIL: run in a worker thread,
    it still stops the event loop for that long. Pieces of 64-128 K characters (one piece of samples)
    hold it well under 1 ms each, so the loop runs between them. Padding is only valid at the very end,
    as in a whole-string decode.
    """
    if piece_chars % 4:
        raise ValueError("piece_chars must be a multiple of 4")
    out: list[bytes] = []
    last = len(b64) - piece_chars
    for start in range(0, max(len(b64), 1), piece_chars):
        piece = b64[start : start + piece_chars]
        if start < last and piece.endswith("="):
            raise InvalidRequest("Invalid base64 audio: padding before the end of the data.", param=param)
        out.append(pcm.b64_to_bytes(piece, param=param))
    return out


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
        return np.concatenate([np.zeros(0, np.int16), *self.decode_chunks(b64, param=param)])

    def decode_chunks(
        self, b64: str, *, param: str = "audio", chunk: int = PIECE_SAMPLES
    ) -> Iterator[np.ndarray]:
        """:meth:`decode` in int16 pieces of ``chunk`` samples (the last one shorter).

        The base64 is decoded and checked whole before the first piece (bad input yields nothing), but
        in pieces of its own (see :func:`b64_pieces`), and no full-length sample array is built: a
        15 MiB append costs its bytes plus one piece at a time.
        """
        if chunk % 3:
            raise ValueError("chunk must be a multiple of 3 (whole base64 quanta per piece)")
        pieces = b64_pieces(b64, chunk * self.bytes_per_sample // 3 * 4, param=param)
        n = sum(map(len, pieces))
        if n % self.bytes_per_sample:
            raise InvalidRequest(f"16-bit PCM audio must have an even number of bytes, got {n}.", param=param)
        for i, piece in enumerate(pieces):
            pieces[i] = b""  # each piece's bytes are freed once decoded
            if piece:
                yield self._decode(piece)

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
