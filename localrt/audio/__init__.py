"""Audio plumbing shared by the HTTP speech endpoints and the realtime loop.

``pcm`` (int16/float32/base64), ``resample`` (soxr, one-shot and streaming), ``codecs`` (PyAV decode and
encode, including a streaming encoder) and ``g711`` (mu-law / A-law).
"""
