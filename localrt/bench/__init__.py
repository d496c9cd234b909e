"""``localrt bench``: latency profiling of the voice loop and the HTTP endpoints against the floor."""
