"""AsyncClient (aio-pika) against the real broker: clear failures, the loop never blocked, duplicate
replies dropped, re-send after a cut, results/timelines/profiles as the sync client gives them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from serq.client import BrokerUnavailable, Client, ServiceError, Timeout
from serq.client.errors import ClientError
from serq.schemas import PredictionResult

from conftest import REPO, close_broker_connections, ravdess_clip
from helpers.broker import echo_worker

pytest.importorskip("aio_pika", reason="AsyncClient needs the async extra: pip install 'serq[async]'")

from serq.client.aio import AsyncClient  # noqa: E402 - after the skip above
from serq.client.profiles import AsyncSpeakerProfiles  # noqa: E402
from serq.client.timeline import astream_timeline, stream_timeline  # noqa: E402

SAMPLES = sorted((REPO / "samples").glob("*.flac"))


def test_no_broker_is_a_clear_error_naming_every_node_without_passwords():
    async def main():
        async with AsyncClient("amqp://u:s3cret@127.0.0.1:1/%2F, amqp://v:other@127.0.0.1:2/%2F", "x"):
            pass

    with pytest.raises(BrokerUnavailable) as info:
        asyncio.run(main())
    text = str(info.value)
    assert info.value.code == "no_broker" and "SERQ_AMQP_URL" in text
    assert "127.0.0.1:1" in text and "127.0.0.1:2" in text
    assert "s3cret" not in text and "other" not in text


@pytest.mark.broker
def test_no_worker_times_out_and_a_missing_file_is_not_found(amqp_url, prefix):
    async def main():
        async with AsyncClient(amqp_url, prefix) as client:
            with pytest.raises(Timeout) as timeout:
                await client.classify(b"RIFF....", timeout=1)
            with pytest.raises(ClientError) as missing:
                await client.classify("/no/such/clip.wav")
            return timeout.value, missing.value

    timeout, missing = asyncio.run(main())
    assert "serq worker" in str(timeout) and f"{prefix}.classify does not exist" in str(timeout)
    assert missing.code == "not_found"


async def _ticker(stop: asyncio.Event, lags: list[float], period: float = 0.01) -> None:
    """How late the loop wakes a coroutine that sleeps ``period``: the loop's lag."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(period)
        lags.append(time.perf_counter() - start - period)


@pytest.mark.broker
def test_fifty_concurrent_classifications_never_block_the_loop(start_worker, amqp_url, prefix):
    """50 requests go out before any worker runs; the worker starts while they wait.

    Each request waits seconds for its reply (the worker's start-up), so a client that blocked
    the loop for a round trip would show a lag of seconds; this one must keep the loop ticking.
    """
    clips = [SAMPLES[i % len(SAMPLES)] for i in range(50)]
    lags: list[float] = []

    async def main():
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(stop, lags))
        async with AsyncClient(amqp_url, prefix, timeout=180) as client:
            started = time.perf_counter()
            calls = asyncio.gather(*(client.classify(clip) for clip in clips))
            await asyncio.to_thread(start_worker)  # returns once the worker consumes
            results = await calls
            elapsed = time.perf_counter() - started
        stop.set()
        await ticker
        return results, elapsed

    results, elapsed = asyncio.run(main())
    with Client(amqp_url, prefix, timeout=60) as client:
        expected = {clip.name: result for clip, result in client.classify_many(SAMPLES)}
    assert len(results) == 50 and all(isinstance(r, PredictionResult) for r in results)
    for clip, result in zip(clips, results, strict=True):
        assert result.file == clip.name and result.label == expected[clip.name].label
        assert result.probabilities == pytest.approx(expected[clip.name].probabilities, abs=1e-9)
    assert len({r.request_id for r in results}) == 50
    max_lag = max(lags)
    print(f"50 classifications in {elapsed:.2f} s (worker start included); {len(lags)} ticks, "
          f"max loop lag {max_lag * 1000:.0f} ms")
    assert elapsed > 2.0, "the worker started too fast for the lag bound below to mean anything"
    assert max_lag < 1.0, f"the event loop stalled for {max_lag:.2f} s"


@pytest.mark.broker
def test_classify_many_is_ordered_bounded_and_per_item_errors(start_worker, amqp_url, prefix, tmp_path):
    start_worker()
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    items = [SAMPLES[0], tmp_path / "missing.wav", broken, *SAMPLES[1:4]]

    async def main():
        async with AsyncClient(amqp_url, prefix, timeout=60) as client:
            in_flight, peak = 0, 0
            real_round_trip = client._round_trip

            async def counting(request):
                nonlocal in_flight, peak
                in_flight += 1
                peak = max(peak, in_flight)
                try:
                    return await real_round_trip(request)
                finally:
                    in_flight -= 1

            client._round_trip = counting
            outcomes = [pair async for pair in client.classify_many(items, max_in_flight=2)]
            with pytest.raises(ValueError):
                client.classify_many(items, max_in_flight=0)
            return outcomes, peak

    outcomes, peak = asyncio.run(main())
    assert [item for item, _ in outcomes] == items
    kinds = [o.code if isinstance(o, ClientError) else o.label for _, o in outcomes]
    assert kinds[1] == "not_found" and kinds[2] == "unsupported_format"
    assert all(isinstance(o, PredictionResult) for i, (_, o) in enumerate(outcomes) if i not in (1, 2))
    assert isinstance(outcomes[2][1], ServiceError)
    assert peak <= 2


@pytest.mark.broker
def test_duplicate_replies_are_dropped(amqp_url, prefix):
    async def main():
        async with AsyncClient(amqp_url, prefix) as client:
            async with echo_worker(amqp_url, f"{prefix}.classify", copies=2) as worker:
                messages = []
                for text in ("first", "second"):
                    with pytest.raises(ServiceError) as info:
                        await client.classify(text.encode(), timeout=60)
                    messages.append((info.value.code, info.value.message))
                items = [f"clip {i}".encode() for i in range(25)]
                outcomes = [pair async for pair in client.classify_many(items, max_in_flight=5, timeout=60)]
            return messages, items, outcomes, worker.seen

    messages, items, outcomes, seen = asyncio.run(main())
    assert messages == [("bad_audio", "first"), ("bad_audio", "second")]  # never the first one's duplicate
    assert [item for item, _ in outcomes] == items
    assert [o.message for _, o in outcomes] == [i.decode() for i in items]
    assert len(seen) == 27 and len(set(seen)) == 27  # each request sent once: no spurious re-sends


@pytest.mark.broker
def test_unanswered_requests_are_resent_after_a_connection_cut(amqp_url, prefix):
    async def main():
        async with AsyncClient(amqp_url, prefix) as client:
            async with echo_worker(amqp_url, f"{prefix}.classify", skip_first=1) as worker:
                call = asyncio.create_task(client.classify(b"hello", timeout=120))
                deadline = time.monotonic() + 60
                while not worker.seen:  # the first delivery reached the worker, which swallows it
                    assert time.monotonic() < deadline, "the first delivery never reached the echo worker"
                    await asyncio.sleep(0.05)
                cut = await asyncio.to_thread(close_broker_connections, f"serq-client {prefix} (asyncio)")
                with pytest.raises(ServiceError) as info:
                    await call
            return cut, info.value, worker.seen

    cut, error, seen = asyncio.run(main())
    assert cut == 1
    assert error.message == "hello"
    assert len(seen) == 2 and seen[0] == seen[1]  # the same request, re-sent once


@pytest.mark.broker
def test_subscribe_delivers_results_by_emotion(start_worker, amqp_url, prefix):
    start_worker()

    async def main():
        got: list[tuple[str, str | None]] = []
        arrived = asyncio.Event()

        async def on_result(result, key):
            got.append((key, result.label))
            arrived.set()

        async with AsyncClient(amqp_url, prefix, timeout=60) as client:
            expected = await client.classify(SAMPLES[0])
            subscription = await client.subscribe([expected.label], on_result)
            async with subscription:
                again = await client.classify(SAMPLES[0])
                await asyncio.wait_for(arrived.wait(), 30)
            with pytest.raises(ValueError):
                await client.subscribe(["grumpy"], on_result)
        return expected, again, got

    expected, again, got = asyncio.run(main())
    assert got == [(f"emotion.{expected.label}", again.label)]


@pytest.mark.broker
def test_async_timeline_equals_the_sync_one(start_worker, amqp_url, prefix):
    start_worker()
    recording = SAMPLES[0]
    with Client(amqp_url, prefix, timeout=60) as client:
        sync = stream_timeline(client, recording, chunk_s=1.0)

    async def main():
        seen = []
        async with AsyncClient(amqp_url, prefix, timeout=60) as client:
            timeline = await astream_timeline(client, recording, seen.append, chunk_s=1.0)
        return timeline, seen

    timeline, seen = asyncio.run(main())
    assert timeline.segments and timeline.segments == sync.segments == seen
    assert timeline.duration_s == sync.duration_s and timeline.model_version == sync.model_version


@pytest.mark.broker
@pytest.mark.corpus
def test_async_profiles_enrol_and_classify(start_worker, amqp_url, prefix, ravdess_dir, tmp_path):
    start_worker()
    calm = [ravdess_clip(12, e, i, s, r) for e, i in ((1, 1), (2, 1), (2, 2)) for s in (1, 2) for r in (1, 2)]
    calm = list(dict.fromkeys(calm))[:10]

    async def main():
        async with AsyncClient(amqp_url, prefix, timeout=60) as client:
            speakers = AsyncSpeakerProfiles(client, tmp_path / "profiles")
            profile = await speakers.enroll("caller-12", calm)
            result = await speakers.classify("caller-12", ravdess_clip(12, 5, 2, 1, 1))
            plain = await speakers.classify(None, ravdess_clip(12, 5, 2, 1, 1))
            stored = await speakers.get("caller-12")
            gone = await speakers.delete("caller-12")
            return profile, result, plain, stored, gone, await speakers.get("caller-12")

    profile, result, plain, stored, gone, after = asyncio.run(main())
    assert profile.count == len(calm) and profile.speaker_key == "caller-12"
    assert Path(tmp_path / "profiles").is_dir() and stored == profile
    assert (result.normalisation, result.profile_status) == ("speaker", "used")
    assert plain.normalisation == "none" and plain.profile_status is None
    assert gone and after is None



def _seen_by_followers(client: Client, send) -> list[str]:
    """The request ids followers on ``<p>.results`` get while ``send()`` runs, ``send`` returning the ids it sent;
    the last one sent must be public (a marker: once its copy is in, every earlier copy would be too)."""
    seen: list[str] = []
    with client.subscribe(None, lambda result, key: seen.append(result.request_id)):
        marker = send()[-1]
        deadline = time.monotonic() + 30
        while marker not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
    assert marker in seen, "the public marker's copy never reached the follower"
    return seen


@pytest.mark.broker
def test_a_private_request_is_copied_to_no_follower_from_either_client(start_worker, amqp_url, prefix):
    """``private=True`` on AsyncClient.classify as on Client.classify (one header builder, client/wire.py): the
    caller gets its reply, followers on ``<p>.results`` never see it; the public request after it is copied."""
    start_worker()

    async def send_async() -> list[str]:
        async with AsyncClient(amqp_url, prefix, timeout=60) as client:
            hidden = await client.classify(SAMPLES[0], private=True)
            shown = await client.classify(SAMPLES[1])
        assert hidden.label and hidden.file == SAMPLES[0].name
        return [hidden.request_id, shown.request_id]

    with Client(amqp_url, prefix, timeout=60) as follower, Client(amqp_url, prefix, timeout=60) as sync:
        sent_async: list[str] = []
        seen_async = _seen_by_followers(follower, lambda: sent_async.extend(asyncio.run(send_async())) or sent_async)
        sent_sync: list[str] = []

        def send_sync() -> list[str]:
            sent_sync.append(sync.classify(SAMPLES[2], private=True).request_id)
            sent_sync.append(sync.classify(SAMPLES[3]).request_id)
            return sent_sync

        seen_sync = _seen_by_followers(follower, send_sync)
    assert sent_async[0] not in seen_async and sent_async[1] in seen_async, (sent_async, seen_async)
    assert sent_sync[0] not in seen_sync and sent_sync[1] in seen_sync, (sent_sync, seen_sync)
