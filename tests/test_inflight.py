"""In-flight batching (decoding.DecodeBatch, inflight.InflightBatcher) on the tiny fp32 build: requests join
a running batch at step boundaries and leave when they end, and each request's tokens are exactly the tokens
it gets decoded alone, whatever joins or leaves around it."""

import threading
import time

import numpy as np
import pytest

from canary_trt.decoding import DecodeBatch, Request, splice_fake_ids
from canary_trt.inflight import InflightBatcher, ShuttingDown
from canary_trt.onnx_pipeline import OnnxPipeline
from canary_trt.tokenizer import asr_prompt_ids

NEW = 12


@pytest.fixture(scope="module")
def pipeline(cpu_build):
    return OnnxPipeline(cpu_build)


@pytest.fixture(scope="module")
def requests(pipeline, clips):
    """Prompts of different lengths (the audio sets them): a joiner can be wider or narrower than the batch.
    end_id -1 for some, so they run to their budget; budgets differ, so rows leave at different steps."""
    prompt = asr_prompt_ids(pipeline.tokenizer)
    made = {}
    for name, budget, end_id in (("0880", NEW, -1), ("35s", 9, pipeline.eos_id), ("1s", 5, -1), ("10s", NEW, -1),
                                 ("0870", 3, -1)):  # fmt: skip
        (table,) = pipeline.embed_audio([clips[name]])
        ids = splice_fake_ids(prompt, pipeline.placeholder_id, len(table), pipeline.vocab_size)
        made[name] = Request(ids, table, budget, end_id)
    made["text"] = Request(np.array(prompt[:3]), None, 7, end_id=-1)  # no prompt table
    return made


@pytest.fixture(scope="module")
def alone(pipeline, requests):
    return {name: pipeline.decoder.generate([r])[0] for name, r in requests.items()}


def test_joining_and_leaving_rows_leave_every_request_exact(pipeline, requests, alone):
    batch, got = DecodeBatch(pipeline.decoder), {}
    schedule = {0: ["0880"], 2: ["35s", "1s"], 3: ["text"], 6: ["10s", "0870"]}  # step -> who joins before it
    step = 0
    while step in schedule or len(batch) or step < max(schedule):
        if step in schedule:
            new, done = batch.join({name: requests[name] for name in schedule[step]})
            got.update(done)
        if len(batch):
            new, done = batch.step()
            got.update(done)
        step += 1
    assert got == alone
    assert len(alone["0880"]) == NEW and len(alone["1s"]) == 5 and len(alone["text"]) == 7


class Collect:
    """An inflight.Sink that records what it is told."""

    def __init__(self, rows=1):
        self.rows, self.tokens, self.ids, self.error = rows, [], {}, None
        self.finished = threading.Event()

    def token(self, row, token):
        self.tokens.append((row, token))

    def done(self, row, ids):
        self.ids[row] = ids
        if len(self.ids) == self.rows:
            self.finished.set()

    def fail(self, error):
        self.error = error
        self.finished.set()


def test_batcher_serves_staggered_requests_exactly(pipeline, requests, alone):
    batcher = InflightBatcher(pipeline.decoder, max_rows=4)
    try:
        sinks = {}
        for name in ("0880", "35s", "1s", "text", "10s", "0870"):
            sinks[name] = Collect()
            batcher.submit([requests[name]], sinks[name])
            time.sleep(0.05)  # arrivals while the batch decodes
        pair = Collect(rows=2)
        batcher.submit([requests["1s"], requests["0870"]], pair)  # one request of two rows joins as a whole
        for sink in [*sinks.values(), pair]:
            assert sink.finished.wait(60) and sink.error is None
        assert {name: sink.ids[0] for name, sink in sinks.items()} == alone
        assert pair.ids == {0: alone["1s"], 1: alone["0870"]}
        assert [t for _, t in sinks["0880"].tokens] == alone["0880"]  # streamed as they came
        with pytest.raises(ValueError, match="max_rows 4"):
            batcher.submit([requests["1s"]] * 5, Collect(5))
    finally:
        batcher.close()


def test_the_waiting_room_is_bounded_and_a_failed_step_fails_only_its_rows(pipeline, requests, alone, monkeypatch):
    """max_rows 1: one row decodes, one waits, a third submit blocks until there is room. A step that raises
    fails the request it was decoding; the next one is served."""
    gate, run = threading.Event(), pipeline.decoder._run
    calls = []

    def held(*args):
        gate.wait()
        calls.append(1)
        if len(calls) == 3:  # the first request's second step
            raise RuntimeError("onnxruntime failed")
        return run(*args)

    monkeypatch.setattr(pipeline.decoder, "_run", held)
    batcher = InflightBatcher(pipeline.decoder, max_rows=1)
    try:
        first, second, third = Collect(), Collect(), Collect()
        batcher.submit([requests["0880"]], first)
        time.sleep(0.2)  # the loop has taken it and waits in its prefill
        batcher.submit([requests["1s"]], second)
        blocked = threading.Thread(target=batcher.submit, args=([requests["0870"]], third))
        blocked.start()
        blocked.join(0.5)
        assert blocked.is_alive(), "a full waiting room must block submit"
        gate.set()
        blocked.join(60)
        for sink in (first, second, third):
            assert sink.finished.wait(60)
        assert isinstance(first.error, RuntimeError) and first.ids == {}
        assert second.ids == {0: alone["1s"]} and third.ids == {0: alone["0870"]}
    finally:
        batcher.close()


def test_close_fails_what_is_waiting_or_running(pipeline, requests, monkeypatch):
    gate, run = threading.Event(), pipeline.decoder._run
    monkeypatch.setattr(pipeline.decoder, "_run", lambda *args: (gate.wait(), run(*args))[1])
    batcher = InflightBatcher(pipeline.decoder, max_rows=1)
    running, waiting = Collect(), Collect()
    batcher.submit([requests["0880"]], running)
    time.sleep(0.2)
    batcher.submit([requests["1s"]], waiting)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.set()
    closer.join(60)
    assert isinstance(running.error, ShuttingDown) and isinstance(waiting.error, ShuttingDown)
    with pytest.raises(ShuttingDown):
        batcher.submit([requests["1s"]], Collect())


def test_the_served_decoder_waits_for_no_batch(cpu_build):
    """Requests join at the next step, so Triton's batcher holds none back; max_batch_size is the in-flight bound
    (serving/decoder.py)."""
    config = (cpu_build / "model_repository" / "decoder" / "config.pbtxt").read_text()
    assert "max_batch_size: 32" in config and "max_queue_delay_microseconds: 0" in config
