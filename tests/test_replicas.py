"""Several replicas: the endpoint pool (spreading, take-out with backoff, probes, DNS names) without a server,
then live on two tritonservers on loopback: both used, and a replica SIGKILLed mid-bench loses nothing.

Live parts run the real tritonserver on CPU with the tiny random checkpoint; the two replicas share one gRPC
port on 127.0.0.1 and 127.0.0.2, like the pods behind a Kubernetes headless Service."""

import asyncio
import json
import os
import signal
import socket
import threading
import time

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from canary_trt.audio import load_audio
from canary_trt.client.api import MODEL, AsyncTranscriptionClient, TranscriptionClient
from canary_trt.client.cli import main
from canary_trt.client.endpoints import AsyncEndpointPool, Dispatch, EndpointPool, resolve, split_urls
from canary_trt.client.manifest import librivox_utterances, write_manifest
from canary_trt.client.resume import PARTIAL_NAME
from canary_trt.client.retry import RetriesExhausted, RetryPolicy
from canary_trt.client.stats import endpoint_statistics, sum_statistics
from canary_trt.server import TritonServer
from canary_trt.transcribe import transcribe

MAX_NEW = 16
UNAVAILABLE = InferenceServerException(msg="failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
OVERLOADED = InferenceServerException(msg="Exceeds maximum queue size", status="StatusCode.UNAVAILABLE")
BAD_INPUT = InferenceServerException(msg="WAV: too short", status="StatusCode.INVALID_ARGUMENT")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool_of(urls, clock=None, retry=RetryPolicy(), **options) -> EndpointPool:
    return EndpointPool(urls, lambda url: f"client of {url}", retry, clock=clock or Clock(), **options)


def fake_dns(monkeypatch, names: dict[str, list[str]]):
    """getaddrinfo answering `names` (name -> addresses) and passing anything else to the real one."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in names:
            return real(host, port, *args, **kwargs)
        if not names[host]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in names[host]]  # fmt: skip

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# --- the pool, without a server -----------------------------------------------------------------------------


def test_urls_are_split_on_commas_in_order_each_once():
    assert split_urls("a:1") == ["a:1"]
    assert split_urls("a:1, b:2,") == ["a:1", "b:2"]
    assert split_urls(["a:1", "b:2,c:3", "a:1"]) == ["a:1", "b:2", "c:3"]
    with pytest.raises(ValueError, match="no server endpoint"):
        split_urls(" , ")


def test_a_name_with_several_addresses_is_one_endpoint_per_address(monkeypatch):
    assert resolve("localhost:8001") == ["localhost:8001"]  # one address per family: kept, gRPC resolves it
    fake_dns(monkeypatch, {"asr-headless": ["10.0.0.7", "10.0.0.8", "10.0.0.7", "fd00::7", "fd00::8", "fd00::9"],
                           "dual": ["10.0.0.7", "fd00::7"], "gone": []})  # fmt: skip
    assert resolve("asr-headless:8001") == ["[fd00::7]:8001", "[fd00::8]:8001", "[fd00::9]:8001"]  # the larger family
    assert resolve("dual:8001") == ["dual:8001"]
    assert resolve("gone:8001") is None
    assert resolve("10.1.2.3:8001") == ["10.1.2.3:8001"] and resolve("no-port") == ["no-port"]
    pool = pool_of(["gone:8001", "10.1.2.3:8001,10.1.2.3:8001"])  # not resolvable now: kept for gRPC to try
    assert [e.url for e in pool.endpoints] == ["gone:8001", "10.1.2.3:8001"]
    assert [e.triton for e in pool.endpoints] == ["client of gone:8001", "client of 10.1.2.3:8001"]


def test_names_are_resolved_again_and_replicas_come_and_go(monkeypatch):
    names = {"asr": ["10.0.0.1", "10.0.0.2"]}
    fake_dns(monkeypatch, names)
    clock = Clock()
    pool = pool_of("asr:8001", clock, resolve_every=30)
    assert [e.url for e in pool.endpoints] == ["10.0.0.1:8001", "10.0.0.2:8001"]
    names["asr"] = ["10.0.0.3", "10.0.0.2", "10.0.0.4"]
    clock.now += 29
    pool.acquire()
    assert len(pool.endpoints) == 2  # not yet
    clock.now += 1
    chosen = pool.acquire()
    assert [e.url for e in pool.endpoints] == ["10.0.0.2:8001", "10.0.0.3:8001", "10.0.0.4:8001"]
    assert chosen.url != "10.0.0.2:8001"  # the new ones had nothing in flight
    assert [e.url for e in pool.retired] == ["10.0.0.1:8001"]
    assert len(pool.clients()) == 4  # the retired one's client is closed with the others
    names["asr"] = []  # a failed look-up (e.g. no ready pod) keeps the last answer
    clock.now += 30
    pool.acquire()
    assert len(pool.endpoints) == 3


def test_a_slow_dns_answer_does_not_block_the_event_loop(monkeypatch):
    """The async client's pool looks names up again in a worker thread: a send goes on to the endpoints
    known meanwhile, other coroutines keep running, and the answer is applied when it comes."""
    names = {"asr": ["10.0.0.1", "10.0.0.2"]}
    fake_dns(monkeypatch, names)
    answered_by_dns = socket.getaddrinfo
    looked_up_in = []

    def slow_getaddrinfo(*args, **kwargs):
        looked_up_in.append(threading.current_thread())
        time.sleep(1.0)
        return answered_by_dns(*args, **kwargs)

    async def run():
        async with AsyncTranscriptionClient("asr:8001") as client:  # the pool the async client uses
            assert isinstance(client.pool, AsyncEndpointPool) and len(client.endpoints) == 2
        clock = Clock()
        pool = AsyncEndpointPool("asr:8001", lambda url: f"client of {url}", RetryPolicy(), clock=clock)
        monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
        names["asr"] = ["10.0.0.3", "10.0.0.4"]
        clock.now += 30
        gaps = []

        async def ticker():
            for _ in range(20):
                before = time.perf_counter()
                await asyncio.sleep(0.01)
                gaps.append(time.perf_counter() - before)

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = time.perf_counter()
        chosen = pool.acquire()  # the look-up is due: it starts, this send does not wait for it
        assert time.perf_counter() - start < 0.5
        assert chosen.url in ("10.0.0.1:8001", "10.0.0.2:8001") and pool.lookup is not None
        await ticking
        assert max(gaps) < 0.5  # the loop ran on while DNS took 1 s
        await pool.lookup
        assert [e.url for e in pool.endpoints] == ["10.0.0.3:8001", "10.0.0.4:8001"]
        assert [e.url for e in pool.retired] == ["10.0.0.1:8001", "10.0.0.2:8001"]

    asyncio.run(run())
    assert looked_up_in and threading.main_thread() not in looked_up_in


def test_least_in_flight_first_ties_in_turn():
    pool = pool_of("a:1,b:1,c:1")
    first = [pool.acquire().url for _ in range(3)]
    assert sorted(first) == ["a:1", "b:1", "c:1"]  # each once before any twice
    busy = {e.url: e for e in pool.endpoints}
    pool.release(busy["a:1"], 0, None)
    assert pool.acquire().url == "a:1"  # the only one with nothing in flight
    for endpoint in pool.endpoints:
        pool.release(endpoint, 0, None)
    assert sorted(pool.acquire().url for _ in range(6)) == ["a:1", "a:1", "b:1", "b:1", "c:1", "c:1"]


def test_an_unreachable_endpoint_is_taken_out_with_backoff_and_probed_one_request_at_a_time():
    clock = Clock()
    pool = pool_of("a:1,b:1", clock, RetryPolicy(initial=0.5, max_delay=2.0))
    a, b = pool.endpoints
    sent = clock()
    pool.acquire(), pool.acquire()
    pool.release(a, sent, UNAVAILABLE)
    pool.release(b, sent, None)
    assert (a.failures, a.down_until) == (1, clock() + 0.5)
    assert {pool.acquire().url for _ in range(3)} == {"b:1"}  # out for 0.5 s
    for _ in range(3):
        pool.release(b, clock(), None)

    clock.now += 0.5  # back on probation: one request at a time
    assert pool.acquire(avoid={b}) is a and pool.acquire(avoid={b}) is b
    pool.release(b, clock(), None)
    pool.release(a, clock(), UNAVAILABLE)  # the probe failed: out twice as long
    assert (a.failures, a.down_until) == (2, clock() + 1.0)
    clock.now += 1.0
    probe_sent = clock()
    pool.acquire(avoid={b})
    pool.release(a, probe_sent - 5, UNAVAILABLE)  # sent before the last take-out: the same outage, not counted
    assert a.failures == 2
    for failures in (3, 4):  # out 2 s, then 4 s capped at the policy's max_delay
        clock.now = a.down_until
        assert pool.acquire(avoid={b}) is a
        pool.release(a, clock(), UNAVAILABLE)
        assert (a.failures, a.down_until - clock()) == (failures, 2.0)
    clock.now = a.down_until
    assert pool.acquire(avoid={b}) is a
    pool.release(a, clock(), None)  # the probe answered: healthy again
    assert a.failures == 0 and pool.acquire(avoid={b}) is a and pool.acquire(avoid={b}) is a


def test_overload_bad_input_and_timeouts_do_not_take_an_endpoint_out():
    pool = pool_of("a:1")
    (a,) = pool.endpoints
    deadline = InferenceServerException(msg="Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
    for error in (OVERLOADED, BAD_INPUT, deadline):
        pool.acquire()
        pool.release(a, 0, error)
    assert (a.failures, a.in_flight) == (0, 0) and pool.available()


def test_a_request_goes_to_another_endpoint_at_once_and_counts_its_sends_across_endpoints():
    clock = Clock()
    pool = pool_of("a:1,b:1", clock, RetryPolicy(attempts=4, initial=0.5))
    dispatch = Dispatch(pool)
    tried = []
    for expected_pause in (0.0, 0.5, 0.0):  # a fails -> b at once; b fails -> pause; then any, at once
        with pytest.raises(InferenceServerException):
            with dispatch.attempt() as endpoint:
                tried.append(endpoint.url)
                raise UNAVAILABLE
        assert dispatch.pause(UNAVAILABLE) == expected_pause
        clock.now += expected_pause
    assert sorted(tried[:2]) == ["a:1", "b:1"]
    with pytest.raises(RetriesExhausted, match="gave up after 4 attempt"):
        with pytest.raises(InferenceServerException):
            with dispatch.attempt():
                raise UNAVAILABLE
        dispatch.pause(UNAVAILABLE)
    assert all(e.in_flight == 0 for e in pool.endpoints)

    overloaded = Dispatch(pool_of("a:1,b:1", clock))  # busy, not dead: tried elsewhere, and nobody is taken out
    with pytest.raises(InferenceServerException):
        with overloaded.attempt() as busy:
            raise OVERLOADED
    assert overloaded.pause(OVERLOADED) == 0.0
    with overloaded.attempt() as other:
        assert other is not busy
    with pytest.raises(InferenceServerException, match="too short"):  # not retried
        with pytest.raises(InferenceServerException):
            with overloaded.attempt():
                raise BAD_INPUT
        overloaded.pause(BAD_INPUT)


def test_two_unreachable_endpoints_are_tried_at_once_then_after_the_pause():
    retry = RetryPolicy(attempts=3, initial=0.2)
    start = time.monotonic()
    with TranscriptionClient("127.0.0.1:1,127.0.0.1:2", retry=retry) as client:
        with pytest.raises(RetriesExhausted, match="gave up after 3 attempt"):
            client.transcribe(load_audio(librivox_utterances()[0].audio), sample_rate=16000)
    assert 0.2 <= time.monotonic() - start < 0.4 + 2  # one pause: the second send went to the other at once
    assert sorted(e.failures for e in client.endpoints) == [1, 2]  # the third send was a failed probe


def stats(name, inferences, ns, batches):
    executions = str(sum(batches.values()))
    return {"name": name, "version": "1", "inference_count": str(inferences), "execution_count": executions,
            "inference_stats": {"queue": {"count": str(inferences), "ns": str(ns)}},
            "batch_stats": [{"batch_size": str(size), "compute_infer": {"count": str(runs), "ns": "1"}}
                            for size, runs in batches.items()]}  # fmt: skip


def test_statistics_are_per_endpoint_and_summed_over_those_that_answered_before_and_after():
    before = {"a:1": {"model_stats": [stats("decoder", 2, 2_000_000, {1: 2})]},
              "b:1": {"model_stats": [stats("decoder", 0, 0, {})]}, "c:1": {"model_stats": []}}  # fmt: skip
    after = {"a:1": {"model_stats": [stats("decoder", 6, 4_000_000, {1: 2, 4: 1})]},
             "b:1": {"model_stats": [stats("decoder", 2, 6_000_000, {2: 1})]}, "c:1": None}  # fmt: skip
    total, per_endpoint = endpoint_statistics(before, after)
    assert per_endpoint["a:1"]["decoder"]["inference_count"] == 4
    assert per_endpoint["b:1"]["decoder"]["ms_per_request"]["queue"] == 3.0
    assert "no statistics after the pass" in per_endpoint["c:1"]["unavailable"]
    decoder = total["decoder"]
    assert (decoder["inference_count"], decoder["execution_count"]) == (6, 2)
    assert decoder["ms_per_request"]["queue"] == 1.3333  # (2 + 6) ms over 6 requests: weighted by requests
    assert decoder["batch_size_histogram"] == {"2": 1, "4": 1}
    assert sum_statistics([]) == {} and endpoint_statistics({"a:1": None}, {"a:1": None})[0] == {}


# --- live: two replicas ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(cpu_build):
    """Two servers on one port, at 127.0.0.1 and 127.0.0.2."""
    with TritonServer(cpu_build / "model_repository") as first:
        with TritonServer(cpu_build / "model_repository", host="127.0.0.2", grpc_port=first.grpc_port) as second:
            yield first, second


@pytest.fixture(scope="module")
def expected(reference):
    """Per LibriVox clip path: the reference's tokens."""
    return {str(u.audio): transcribe(reference, [load_audio(u.audio)], max_new_tokens=MAX_NEW)[0].token_ids
            for u in librivox_utterances()}  # fmt: skip


def served(url: str) -> int:
    """Requests the ensemble answered on this server since it started."""
    with grpcclient.InferenceServerClient(url) as triton:
        (model,) = triton.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    return int(model["inference_stats"]["success"].get("count", 0))


def test_requests_spread_over_both_replicas_behind_one_name(replicas, expected, monkeypatch):
    first, second = replicas
    fake_dns(monkeypatch, {"asr-headless": [first.host, second.host]})
    urls = [first.grpc_url, second.grpc_url]
    before = [served(url) for url in urls]
    paths = [u.audio for u in librivox_utterances()] * 2

    async def run():
        async with AsyncTranscriptionClient(f"asr-headless:{first.grpc_port}", concurrency=4) as client:
            assert [e.url for e in client.endpoints] == urls
            return await client.transcribe_many(paths, max_new_tokens=MAX_NEW)

    results = asyncio.run(run())
    assert [r.token_ids for r in results] == [expected[str(p)] for p in paths]
    answered = {url: sum(r.endpoint == url for r in results) for url in urls}
    assert min(answered.values()) >= 1 and sum(answered.values()) == len(paths)
    assert [served(url) - then for url, then in zip(urls, before)] == [answered[url] for url in urls]

    before = [served(url) for url in urls]
    with TranscriptionClient(urls) as client:  # one at a time: in turn
        got = [client.transcribe(p, max_new_tokens=MAX_NEW) for p in paths[:4]]
    assert [r.token_ids for r in got] == [expected[str(p)] for p in paths[:4]]
    assert [served(url) - then for url, then in zip(urls, before)] == [2, 2]


@pytest.mark.parametrize("style", ["repeated", "comma"])
def test_cli_transcribe_with_several_urls(replicas, expected, style, capsys):
    urls = [server.grpc_url for server in replicas]
    before = [served(url) for url in urls]
    paths = [str(u.audio) for u in librivox_utterances()]
    flags = ["--url", urls[0], "--url", urls[1]] if style == "repeated" else ["--url", ",".join(urls)]
    argv = ["transcribe", *flags, "--max-new-tokens", str(MAX_NEW), "--concurrency", "2", "--json", *paths]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["audio"], r["token_ids"]) for r in rows] == [(p, expected[p]) for p in paths]
    assert all(served(url) > then for url, then in zip(urls, before))


def _kill_after_its_first_answer(server: TritonServer, partial, killed: dict) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if partial.is_file() and f'"endpoint": "{server.grpc_url}"' in partial.read_text():
            os.killpg(server.pid, signal.SIGKILL)  # tritonserver and its python stubs, no goodbye
            killed["at"] = time.monotonic()
            return
        time.sleep(0.005)


def test_bench_loses_nothing_when_a_replica_is_killed_mid_run(cpu_build, replicas, expected, tmp_path, capsys):
    utterances = librivox_utterances() * 6
    manifest = write_manifest(tmp_path / "set.jsonl", utterances)
    out = tmp_path / "report"
    survivor = replicas[0]
    doomed = TritonServer(cpu_build / "model_repository").start()
    killed = {}
    try:
        killer = threading.Thread(target=_kill_after_its_first_answer, args=(doomed, out / PARTIAL_NAME, killed),
                                  daemon=True)  # fmt: skip
        killer.start()
        argv = ["bench", "--url", survivor.grpc_url, "--url", doomed.grpc_url, "--manifest", str(manifest),
                "--concurrency", "4", "--warmup", "0", "--max-new-tokens", str(MAX_NEW), "--out", str(out)]  # fmt: skip
        assert main(argv) == 0  # nothing failed: the survivor took over
        killer.join(5)
    finally:
        doomed.stop()
    assert killed, "the replica was never killed"
    printed = capsys.readouterr().out
    assert f"concurrency 4: {len(utterances)} utterances, {len(utterances)} done" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["server"]["endpoints"] == [survivor.grpc_url, doomed.grpc_url]
    (only,) = report["passes"]
    assert sorted(u["index"] for u in only["utterances"]) == list(range(len(utterances)))  # each once
    assert (only["done"], only["failed"]) == (len(utterances), 0)
    for u in only["utterances"]:
        assert u["token_ids"] == expected[u["audio"]], u
    answered = only["requests_by_endpoint"]
    assert answered[doomed.grpc_url] >= 1 and sum(answered.values()) == len(utterances)
    assert "no statistics after the pass" in only["triton_by_endpoint"][doomed.grpc_url]["unavailable"]
    survived = only["triton_by_endpoint"][survivor.grpc_url]
    assert survived["canary_qwen"]["success_count"] == answered[survivor.grpc_url]
    assert only["triton"]["canary_qwen"]["success_count"] == answered[survivor.grpc_url]  # the sum: survivor only
    markdown = (out / "report.md").read_text()
    assert f"`{doomed.grpc_url}` {answered[doomed.grpc_url]}" in markdown and "no statistics after the pass" in markdown
