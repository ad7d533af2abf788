"""Inference: sampling (`generate`, `stream_generate`), chat templates and the REPL,
and the OpenAI-compatible server (`lumenlm.infer.server`, imported on demand since
it needs FastAPI)."""

from __future__ import annotations

from lumenlm.infer.generate import GenerationResult, StreamEvent, generate, stream_generate
from lumenlm.infer.sampling import SamplingParams

__all__ = ["GenerationResult", "SamplingParams", "StreamEvent", "generate", "stream_generate"]
