"""The OpenAI Realtime API over WebSocket, served by local engines (VAD -> Whisper -> LLM -> Piper).

Modules, one concept each:

- ``endpoint``: the WebSocket routes and the handshake (model, auth, GA vs beta shape).
- ``session``: one connection: the reader, the single writer, dispatch, items and responses.
- ``tasks``: the session's background tasks, cancelled and awaited when it closes.
- ``events``: client events parsed by one pydantic ``TypeAdapter``; validation errors -> ``error`` events.
- ``server_events``: every server event built in one place, named for GA or beta.
- ``wire_config`` / ``config``: the session object as each dialect sends it / the one internal model,
  its rendering and partial updates. ``response_options``: per-response overrides.
- ``formats``: the wire audio formats (pcm16 24 kHz, G.711 mu-law / A-law 8 kHz).
- ``input_audio``: the input buffer (chunked, resampled once to 16 kHz for VAD and Whisper).
- ``turn``: server VAD as a pure streaming state machine over silero probabilities.
- ``listener``: the input side: appends -> VAD -> turns -> commits -> transcripts; barge-in; idle timer.
- ``conversation``: ordered items and their conversion to chat messages for the LLM.
- ``response``: one response: LLM -> clause chunker -> ``speech_out`` (Piper -> audio deltas); cancel.
"""
