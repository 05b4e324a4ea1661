"""The gRPC client side of canary-trt. Installs with `pip install .[client]` and never imports torch.

    api.py        TranscriptionClient and AsyncTranscriptionClient
    tensors.py    a request as the ensemble's (or canary_qwen_long's) tensors, and its answer back (Segment)
    streaming.py  live transcription: chunks to canary_qwen_stream, StreamSegment back (`stream`)
    chat.py       LLM mode: a question about a recording to canary_qwen_chat (Answer, AnswerDelta; `ask`)
    subtitles.py  transcriptions as SRT and WebVTT (`transcribe --format srt|vtt`)
    retry.py      RetryPolicy, and what kind of failure an error is (`classify`)
    endpoints.py  several replicas: DNS, the endpoint pool, where each send goes
    bench.py      `canary-trt-client bench`: the passes; results.py (rows, a pass's numbers), resume.py
                  (partial.jsonl), stats.py (Triton's counters), machine.py, metrics.py (WER, RTFx), report.py
    bench_datasets.py  `bench --dataset`: sets streamed with `datasets` (datasets_source.py), the Open ASR
                  Leaderboard preset and its arithmetic (leaderboard.py)
    cli.py        `canary-trt-client`; manifest.py: evaluation sets
"""

from .api import (Answer, AnswerDelta, AsyncTranscriptionClient, RetriesExhausted, RetryPolicy, Segment, StreamSegment,
                  Transcription, TranscriptionClient)  # fmt: skip

__all__ = ["Answer", "AnswerDelta", "AsyncTranscriptionClient", "RetriesExhausted", "RetryPolicy", "Segment", "StreamSegment",
           "Transcription", "TranscriptionClient"]
