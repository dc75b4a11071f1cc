"""Speaker profiles on the client side: keep them per speaker, send them with requests, store the updates.

::

    from serq.client import Client
    from serq.client.profiles import SpeakerProfiles

    with Client() as client:
        speakers = SpeakerProfiles(client, directory="~/.serq-profiles")   # or None: in memory only
        speakers.enroll("caller-17", ["hello1.wav", "hello2.wav", ...])     # 5-12 clips of normal speech
        result = speakers.classify("caller-17", "call.wav")
        print(result.label, result.normalisation)     # "speaker" once the profile has enough clips
        speakers.delete("caller-17")                  # forget the speaker

Workers keep nothing: the profile travels in the ``x-serq-profile`` header and
the reply carries it back (updated when the profile allows updates, see
``enroll(..., updates=True)``). A profile holds feature statistics only (counts,
means, sums of squares): no audio, and no way back to it. The speaker key is
opaque: use an id, not a name. Not thread-safe: one :class:`SpeakerProfiles` per
thread, or a lock around it. :class:`AsyncSpeakerProfiles` is the same for an
:class:`serq.client.aio.AsyncClient` (one per task, or a lock around it).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from serq.client.errors import ClientError
from serq.schemas import EnrollResult, PredictionResult, SpeakerProfile
from serq.schemas.profiles import ENROLL, PROFILE_HEADER


def default_directory() -> Path:
    """``$XDG_DATA_HOME/serq/profiles`` (``~/.local/share/serq/profiles``): where ``serq profiles`` keeps them."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "serq" / "profiles"


class ProfileStore:
    """Profiles by speaker key, in memory or as one JSON file per speaker under ``directory``.

    File names are a hash of the key (keys are opaque and may hold any character);
    files are written atomically and readable by their owner only.
    """

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory).expanduser() if directory else None
        self._memory: dict[str, SpeakerProfile] = {}

    def _path(self, key: str) -> Path:
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def get(self, key: str) -> SpeakerProfile | None:
        if self.directory is None:
            return self._memory.get(key)
        try:
            return SpeakerProfile.model_validate_json(self._path(key).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ClientError(f"profile file {self._path(key)} is damaged ({exc.__class__.__name__}); "
                              "delete it and enrol the speaker again", code="invalid_request") from None

    def put(self, profile: SpeakerProfile) -> None:
        if self.directory is None:
            self._memory[profile.speaker_key] = profile
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(profile.speaker_key)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".profile-", suffix=".tmp")  # mode 0600
        with os.fdopen(fd, "w") as fh:
            fh.write(profile.model_dump_json())
        os.replace(tmp, path)

    def delete(self, key: str) -> bool:
        """Forget the speaker; ``True`` if there was a profile."""
        if self.directory is None:
            return self._memory.pop(key, None) is not None
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def keys(self) -> list[str]:
        if self.directory is None:
            return sorted(self._memory)
        if not self.directory.is_dir():
            return []
        keys = []
        for path in self.directory.glob("*.json"):
            try:
                keys.append(SpeakerProfile.model_validate_json(path.read_bytes()).speaker_key)
            except ValueError:
                continue
        return sorted(keys)


# --- what a request carries and what a reply gives back: shared by the sync and async classes -----


def enroll_headers(speaker: str, profile: SpeakerProfile | None, updates: bool) -> dict:
    """Headers of an ``enroll`` request: the profile so far, or the key of a new one."""
    if profile is not None:
        return {PROFILE_HEADER: profile.model_dump_json()}
    return {"x-serq-speaker": speaker, "x-serq-profile-updates": updates}


def enrolled(reply) -> EnrollResult:
    """``reply`` if it is an ``enroll`` reply (the profile, the model's ``min_clips``); else :class:`ClientError`."""
    if not isinstance(reply, EnrollResult):
        raise ClientError(f"unexpected reply to enroll: {type(reply).__name__}", code="invalid_request")
    return reply


def clips_short(min_clips: int | None, profile: SpeakerProfile) -> int:
    """How many more clips ``profile`` needs before a speaker model needing ``min_clips`` uses it.

    0 when it has enough, or when ``min_clips`` is unknown.
    """
    return max(0, (min_clips or 0) - profile.count)


def profile_headers(profile: SpeakerProfile | None) -> dict | None:
    """Headers of a classify request with ``profile`` (``None``: none)."""
    return {PROFILE_HEADER: profile.model_dump_json()} if profile is not None else None


def updated_profile(sent: SpeakerProfile | None, result: PredictionResult) -> SpeakerProfile | None:
    """The updated profile a classify reply carries back for the speaker of ``sent``, if any, to store."""
    if result.profile is not None and sent is not None and result.profile.speaker_key == sent.speaker_key:
        return result.profile
    return None


class SpeakerProfiles:
    """Enrol speakers and classify their clips with their profiles, through a :class:`serq.client.Client`.

    Args:
        client: the connection to use.
        directory: where profiles are kept (``None``: in memory, gone with the process).
    """

    def __init__(self, client, directory: str | Path | None = None, *, store: ProfileStore | None = None):
        self.client = client
        self.store = store or ProfileStore(directory)
        #: Clips the workers' speaker-normalised model needs in a profile (from the last enrol reply).
        self.min_clips: int | None = None

    def enroll(self, speaker: str, clips: Iterable, *, updates: bool = False, timeout: float | None = None
               ) -> SpeakerProfile:
        """Add ``clips`` (paths or bytes; say 5-12 of normal, calm speech) to ``speaker``'s profile.

        Starts a profile if the speaker has none. ``updates=True`` lets later
        classified clips update it (only for a new profile; an existing one keeps its
        choice). Silent clips add nothing. The profile is stored after every clip.
        """
        profile = self.store.get(speaker)
        for clip in clips:
            reply = enrolled(self.client.call(clip, type=ENROLL, headers=enroll_headers(speaker, profile, updates),
                                              timeout=timeout))
            profile, self.min_clips = reply.profile, reply.min_clips
            self.store.put(profile)
        if profile is None:
            raise ClientError(f"no clips to enrol {speaker!r} with", code="invalid_request")
        return profile

    def clips_short(self, profile: SpeakerProfile) -> int:
        """How many more clips ``profile`` needs before the workers' speaker model uses it (0: enough or unknown).

        Known after an :meth:`enroll` (the reply says what the serving model needs).
        """
        return clips_short(self.min_clips, profile)

    def classify(self, speaker: str | None, clip, *, timeout: float | None = None) -> PredictionResult:
        """Classify ``clip`` with ``speaker``'s profile, if any; store the updated profile the reply carries.

        The result's ``normalisation`` says which model answered and ``profile_status`` why.
        """
        profile = self.store.get(speaker) if speaker else None
        result = self.client.classify(clip, timeout=timeout, headers=profile_headers(profile))
        if (updated := updated_profile(profile, result)) is not None:
            self.store.put(updated)
        return result

    def get(self, speaker: str) -> SpeakerProfile | None:
        return self.store.get(speaker)

    def delete(self, speaker: str) -> bool:
        """Forget ``speaker``'s profile (here; workers never kept it). ``True`` if there was one."""
        return self.store.delete(speaker)


def enroll_and_classify(client, speaker: str, enrol: Iterable, clips: Iterable, *,
                        directory: str | Path | None = None, updates: bool = False
                        ) -> tuple[SpeakerProfile, list[PredictionResult]]:
    """One call for a demo: enrol ``speaker`` from ``enrol`` clips, then classify ``clips`` with the profile."""
    speakers = SpeakerProfiles(client, directory)
    profile = speakers.enroll(speaker, enrol, updates=updates)
    return profile, [speakers.classify(speaker, clip) for clip in clips]


class AsyncSpeakerProfiles:
    """:class:`SpeakerProfiles` for asyncio, through a :class:`serq.client.aio.AsyncClient`.

    Same requests and store; a directory store is read and written in a thread.
    """

    def __init__(self, client, directory: str | Path | None = None, *, store: ProfileStore | None = None):
        self.client = client
        self.store = store or ProfileStore(directory)
        #: Clips the workers' speaker-normalised model needs in a profile (from the last enrol reply).
        self.min_clips: int | None = None

    async def _store(self, method: str, *args):
        call = getattr(self.store, method)
        return call(*args) if self.store.directory is None else await asyncio.to_thread(call, *args)

    async def enroll(self, speaker: str, clips: Iterable, *, updates: bool = False, timeout: float | None = None
                     ) -> SpeakerProfile:
        """As :meth:`SpeakerProfiles.enroll`."""
        profile = await self._store("get", speaker)
        for clip in clips:
            reply = enrolled(await self.client.call(clip, type=ENROLL, timeout=timeout,
                                                    headers=enroll_headers(speaker, profile, updates)))
            profile, self.min_clips = reply.profile, reply.min_clips
            await self._store("put", profile)
        if profile is None:
            raise ClientError(f"no clips to enrol {speaker!r} with", code="invalid_request")
        return profile

    def clips_short(self, profile: SpeakerProfile) -> int:
        """As :meth:`SpeakerProfiles.clips_short`."""
        return clips_short(self.min_clips, profile)

    async def classify(self, speaker: str | None, clip, *, timeout: float | None = None) -> PredictionResult:
        """As :meth:`SpeakerProfiles.classify`."""
        profile = await self._store("get", speaker) if speaker else None
        result = await self.client.classify(clip, timeout=timeout, headers=profile_headers(profile))
        if (updated := updated_profile(profile, result)) is not None:
            await self._store("put", updated)
        return result

    async def get(self, speaker: str) -> SpeakerProfile | None:
        return await self._store("get", speaker)

    async def delete(self, speaker: str) -> bool:
        """Forget ``speaker``'s profile. ``True`` if there was one."""
        return await self._store("delete", speaker)
