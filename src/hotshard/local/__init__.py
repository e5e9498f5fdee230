"""Local mode: hotshard's services as processes on this machine instead of pods."""
