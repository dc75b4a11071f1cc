"""Emotion timelines of long recordings: the result, and the messages of a streamed timeline.

A timeline is a list of labelled speech segments (silence between them is not
labelled) and a summary. The same models serve ``serq timeline --json``, the
``timeline.chunk`` request/reply over the broker and the client library, which
builds the final :class:`Timeline` from the streamed segments with
:meth:`Timeline.build` (so the summary is computed in one place).

Streaming keeps workers stateless: every reply carries the stream's state
(:class:`TimelineStreamState`, a few kB) and the client sends it back with the
next chunk, so any worker can take any chunk. The state is sealed
(``TimelineStreamState.seal``, HMAC-SHA256 under the workers' ``SERQ_STATE_KEY``) and
re-validated by the worker that receives it: a client carries it, never chooses it.

A speaker profile (``x-serq-profile``, as for ``classify``) applies to a whole
timeline: with a usable one every window is classified by the speaker-normalised
model; the profile is never updated by a timeline.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serq.schemas.profiles import PROFILE_HEADER, ProfileStatus
from serq.settings import TIMELINE_MAX_OVERLAP

#: Samples per second of every timeline computation and of streamed PCM.
TIMELINE_RATE = 16_000
#: Content type of a ``timeline.chunk`` body: raw little-endian float32 PCM, mono, 16 kHz.
PCM_CONTENT_TYPE = "audio/x-raw;format=F32LE;rate=16000;channels=1"
#: AMQP ``type`` of a streamed-timeline request.
TIMELINE_CHUNK = "timeline.chunk"
#: Version of :class:`TimelineStreamState`'s layout; a reply refuses a state of another version.
STATE_VERSION = 1
#: Most windows a stream state ever holds (the smoothing context: two behind, two ahead).
MAX_STATE_WINDOWS = 6


class _Model(BaseModel):
    # No NaN/inf anywhere: a timeline never computes one, and a stream state's seal needs every
    # value to have exactly one canonical form.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TimelineParams(_Model):
    """How a recording is cut and smoothed. Carried in a stream's state, so every chunk uses the same.

    Each second of speech is classified about ``window_s / hop_s`` times, so that ratio is
    bounded (:data:`~serq.settings.TIMELINE_MAX_OVERLAP`): no choice of parameters makes a
    recording cost much more than its audio warrants.
    """

    window_s: float = Field(3.0, ge=0.5, le=30.0, description="classification window, seconds")
    hop_s: float = Field(2.0, ge=0.1, le=30.0, description="step between windows (window - hop = overlap), seconds")
    max_pause_s: float = Field(1.0, ge=0.1, le=10.0, description="a pause up to this long stays inside a segment")
    min_speech_s: float = Field(0.3, ge=0.1, le=10.0, description="speech segments with less active speech are dropped")

    @model_validator(mode="after")
    def _hop(self) -> "TimelineParams":
        if self.hop_s > self.window_s:
            raise ValueError("hop_s must not exceed window_s (windows would leave gaps)")
        if self.window_s > TIMELINE_MAX_OVERLAP * self.hop_s:
            raise ValueError(f"window_s must not exceed {TIMELINE_MAX_OVERLAP:g} x hop_s "
                             "(each second of speech would be classified more often than that)")
        if self.min_speech_s > self.window_s:
            raise ValueError("min_speech_s must not exceed window_s")
        return self


class Moment(_Model):
    """One classification window: where, what, how sure."""

    start: float = Field(description="seconds from the start of the recording")
    end: float = Field(description="seconds")
    label: str
    confidence: float = Field(ge=0, le=1, description="smoothed probability of `label` in this window")


class TimelineSegment(_Model):
    """A stretch of speech with one emotion."""

    start: float = Field(description="seconds from the start of the recording")
    end: float = Field(description="seconds")
    label: str = Field(description="the emotion of this stretch, after smoothing")
    confidence: float = Field(ge=0, le=1, description="probability of `label`, averaged over the segment")
    probabilities: dict[str, float] = Field(description="every class's smoothed probability, averaged over the segment")
    windows: int = Field(ge=1, description="classification windows that voted for this segment")
    peak: Moment = Field(description="the segment's most confident window")

    @property
    def duration(self) -> float:
        return self.end - self.start


class TimelineSummary(_Model):
    speech_s: float = Field(description="labelled (speech) seconds in the recording")
    share_of_time: dict[str, float] = Field(description="label -> share of the speech time, 0..1, for every class")
    strongest: list[Moment] = Field(description="the most confident non-neutral moments, strongest first (at most 5)")


class Timeline(_Model):
    """The emotional course of a recording: what `serq timeline --json` prints."""

    file: str | None = Field(None, description="the file, in CLI output")
    duration_s: float = Field(description="length of the recording, seconds")
    segments: list[TimelineSegment] = Field(description="speech segments in time order; silence is not labelled")
    summary: TimelineSummary
    model_version: str
    params: TimelineParams
    normalisation: Literal["none", "speaker"] = Field(
        "none", description="'speaker': the speaker-normalised model used the profile sent; 'none': the plain model")
    profile_status: ProfileStatus | None = Field(None, description="what became of the profile sent (null: none sent)")

    @classmethod
    def build(cls, segments: list[TimelineSegment], *, duration_s: float, labels: list[str], model_version: str,
              params: TimelineParams, file: str | None = None, top: int = 5,
              profile_status: ProfileStatus | None = None) -> "Timeline":
        """A timeline from its segments, with the summary computed here (the one place it is)."""
        return cls(file=file, duration_s=round(duration_s, 3), segments=segments,
                   summary=summarise(segments, labels, top=top), model_version=model_version, params=params,
                   normalisation="speaker" if profile_status == "used" else "none", profile_status=profile_status)


def summarise(segments: list[TimelineSegment], labels: list[str], *, top: int = 5) -> TimelineSummary:
    """Share of speech time per label and the ``top`` most confident non-neutral segment peaks."""
    speech = sum(s.duration for s in segments)
    share = {label: 0.0 for label in labels}
    for s in segments:
        share[s.label] = share.get(s.label, 0.0) + s.duration
    share = {k: round(v / speech, 4) if speech > 0 else 0.0 for k, v in share.items()}
    peaks = sorted((s.peak for s in segments if s.label != "neutral"), key=lambda m: (-m.confidence, m.start))
    return TimelineSummary(speech_s=round(speech, 3), share_of_time=share, strongest=peaks[:top])


# --- streaming: the state a client carries between chunks -------------------------------------


class VadState(_Model):
    """The voice-activity detector between two chunks (frames are 10 ms; indices count from the recording's start)."""

    noise_db: float | None = Field(None, description="quietest frame of the current 0.5 s bucket, dBFS (null: none yet)")
    noise_buckets: list[float] = Field(default_factory=list, max_length=16,
                                       description="quietest frame of each recent complete bucket, dBFS (the floor's memory)")
    run_start: int | None = Field(None, ge=0, description="first frame of the current run above the off threshold")
    seg_start: int | None = Field(None, ge=0, description="first frame of the open speech segment (null: silence)")
    last_active: int = Field(0, ge=0, description="end (exclusive) of the open segment's last active frame")


class WindowState(_Model):
    """A classified window kept as smoothing context."""

    start: int = Field(ge=0, description="first frame")
    end: int = Field(ge=0, description="end frame (exclusive)")
    probs: list[float] = Field(max_length=64, description="raw class probabilities, in the model's label order")


class RunState(_Model):
    """The open (undecided) stretch of one label."""

    label: str
    start: float = Field(description="seconds")
    weight_s: float = Field(ge=0, description="seconds of windows accumulated")
    prob_sum: list[float] = Field(max_length=64, description="duration-weighted sum of smoothed probabilities")
    windows: int = Field(ge=0)
    peak: Moment | None = None


class TimelineStreamState(_Model):
    """Everything a worker needs to continue a stream (opaque to clients: send it back unchanged).

    Small and bounded: no audio (the client re-sends the undecided tail, see
    ``TimelineChunkResult.next_offset``) and at most :data:`MAX_STATE_WINDOWS` windows.
    Sealed by the worker that wrote it (``seal``); a worker refuses a state whose seal does
    not verify under its ``SERQ_STATE_KEY``, and re-checks that the fields fit together.
    """

    version: int = Field(STATE_VERSION, description="layout version of this state")
    stream_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    next_seq: int = Field(ge=0, description="sequence number the next chunk must carry")
    model_version: str = Field(description="the model the stream started with")
    labels: list[str] = Field(max_length=64, description="the model's labels (probability order)")
    profile_status: ProfileStatus | None = Field(None, description="what became of the profile at chunk 0 (null: none sent)")
    profile_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                       description="sha256 of the profile in use: every later chunk must send the same one")
    params: TimelineParams
    position: int = Field(ge=0, description="samples analysed by the voice-activity detector (whole 10 ms frames)")
    received: int = Field(ge=0, description="samples received so far")
    keep_from: int = Field(ge=0, description="sample index the next chunk's body must start at")
    tail_crc32: int = Field(0, ge=0, description="CRC-32 of the float32 samples [keep_from, received): the re-sent tail")
    vad: VadState
    next_window: int = Field(0, ge=0, description="first frame of the open segment's next regular window")
    windows_seen: int = Field(0, ge=0, description="windows classified in the open segment")
    decided: int = Field(0, ge=0, description="windows of the open segment whose label is final")
    windows: list[WindowState] = Field(default_factory=list, max_length=MAX_STATE_WINDOWS,
                                       description="recent windows of the open segment (smoothing context)")
    window_base: int = Field(0, ge=0, description="index (in the open segment) of windows[0]")
    run: RunState | None = None
    last_boundary: float | None = Field(None, description="seconds: start of the next window's owned span")
    seal: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                             description="HMAC-SHA256 of the other fields under the workers' SERQ_STATE_KEY "
                             "(set by the worker; a state whose seal does not verify is refused)")


class TimelineChunkHeaders(BaseModel):
    """AMQP headers of a ``timeline.chunk`` request (unknown headers are ignored)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    stream_id: str = Field(alias="x-serq-stream-id", pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
                           description="names the stream; the same in every chunk")
    seq: int = Field(alias="x-serq-seq", ge=0, description="0, 1, 2 ... in order; a chunk is sent after the previous reply")
    offset: int = Field(0, alias="x-serq-offset", ge=0,
                        description="sample index of the body's first sample: 0 first, then the previous reply's `next_offset`")
    final: bool = Field(False, alias="x-serq-final", description="true on the last chunk: close the stream")
    state: str | None = Field(None, alias="x-serq-state", max_length=65_536,
                              description="the previous reply's `state`, as JSON; absent on seq 0")
    profile: str | None = Field(
        None, alias=PROFILE_HEADER, max_length=65_536,
        description="the speaker's profile (JSON of SpeakerProfile), as for classify: chunk 0 decides whether it "
        "is used for the whole stream; every later chunk must then send the same one")


class TimelineChunkResult(_Model):
    """The reply to one chunk: segments decided by it, and the state for the next chunk."""

    stream_id: str
    seq: int
    segments: list[TimelineSegment] = Field(description="segments newly decided by this chunk, in time order")
    pending: Moment | None = Field(None, description="provisional label of the speech still undecided, if any")
    final: bool = Field(description="true when the stream is closed (the reply to the `final` chunk)")
    duration_s: float = Field(description="seconds of audio received so far")
    next_offset: int = Field(description="sample index the next chunk's body must start at (re-send from there)")
    state: TimelineStreamState = Field(description="send back unchanged as the next chunk's `x-serq-state`")
    model_version: str
    normalisation: Literal["none", "speaker"] = Field("none", description="as in `Timeline`")
    profile_status: ProfileStatus | None = Field(None, description="as in `Timeline`")
    request_id: str | None = None
    worker: str | None = None
