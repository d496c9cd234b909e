"""The OpenAI Realtime API over WebSocket, served by local engines (VAD -> Whisper -> LLM -> Piper).

Modules, one concept each:

- ``endpoint``: the WebSocket routes and the handshake (model, auth, GA vs beta shape).
- ``session``: one connection: the reader, the single writer, and the turn/response tasks.
- ``events``: client events parsed by one pydantic ``TypeAdapter``; validation errors -> ``error`` events.
- ``server_events``: every server event built in one place, rendered in GA or beta names.
- ``config``: the session configuration, GA/beta rendering, partial updates, per-response overrides.
- ``formats``: the wire audio formats (pcm16 24 kHz, G.711 mu-law / A-law).
- ``input_audio``: the input audio buffer (chunked, resampled once to 16 kHz for VAD and Whisper).
- ``turn``: server VAD as a streaming state machine over silero probabilities.
- ``conversation``: ordered items and their conversion to chat messages for the LLM.
- ``response``: the LLM -> clause chunker -> TTS -> audio framing pipeline of one response.
"""
