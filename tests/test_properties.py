"""Property-based tests (hypothesis): the decoder and every message schema under arbitrary input.

- ``decode`` (and the block reader, ``read_blocks``) on arbitrary bytes, on real WAV/FLAC/OGG files that were truncated or had
  bytes overwritten, and on WAV headers forged field by field, either returns a valid
  clip (finite mono float32 at 16 kHz, in [-1, 1], at least one analysis window) or
  raises a :class:`serq.errors.AudioError` subclass. Nothing else, ever.
- every pydantic model of the contract round-trips through JSON (instances are generated
  from the model's own JSON Schema) and refuses garbage with ``ValidationError`` only.
"""

from __future__ import annotations

import io
import json
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import serq.schemas as schemas
from serq.audiofile import read_blocks
from serq.errors import AudioError
from serq.worker.engine.audio import ANALYSIS_RATE, MIN_SAMPLES, decode

from helpers.audio import wav_header

#: Small limits keep each example cheap; the limits themselves are tested in tests/reliability/.
LIMITS = {"max_bytes": 256 * 1024, "max_seconds": 5.0}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_decode(data: bytes) -> None:
    """The property: a typed AudioError, or a clip that honours every promise of :class:`Audio`;
    and the same of the block reader (:func:`check_read_blocks`), which shares decode's guards."""
    check_read_blocks(data)
    try:
        audio = decode(data, **LIMITS)
    except AudioError as exc:
        assert exc.code and str(exc), "an AudioError without a code or a message"
        return
    s = audio.samples
    assert s.dtype == np.float32 and s.ndim == 1 and len(s) >= MIN_SAMPLES
    assert np.all(np.isfinite(s)) and float(np.abs(s).max(initial=0.0)) <= 1.0
    assert audio.sample_rate == ANALYSIS_RATE and audio.channels >= 1 and audio.original_rate > 0
    assert audio.duration <= LIMITS["max_seconds"] + 1.0 / ANALYSIS_RATE + 1e-6


def check_read_blocks(data: bytes) -> None:
    """The block reader on the same bytes: a typed AudioError, or finite mono float32 blocks in [-1, 1]."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip"
        path.write_bytes(data)
        try:
            blocks = list(read_blocks(path, ANALYSIS_RATE, max_seconds=LIMITS["max_seconds"]))
        except AudioError as exc:
            assert exc.code and str(exc), "an AudioError without a code or a message"
            return
    for block in blocks:
        assert block.dtype == np.float32 and block.ndim == 1 and len(block)
        assert np.all(np.isfinite(block)) and float(np.abs(block).max()) <= 1.0
    assert sum(map(len, blocks)) <= (LIMITS["max_seconds"] + 0.1) * ANALYSIS_RATE


# --------------------------------------------------------------------------- decoding


@lru_cache(maxsize=None)
def valid_files() -> tuple[bytes, ...]:
    """A handful of real files to break: every container, several rates, channel counts and subtypes."""
    rng = np.random.default_rng(7)
    out = []
    for fmt, subtype, rate, channels in [
        ("WAV", "PCM_16", 16_000, 1), ("WAV", "FLOAT", 8_000, 2), ("WAV", "PCM_24", 44_100, 1),
        ("WAV", "DOUBLE", 16_000, 1), ("FLAC", "PCM_16", 16_000, 1), ("FLAC", "PCM_24", 48_000, 2),
        ("OGG", "VORBIS", 16_000, 1), ("OGG", "VORBIS", 44_100, 2),
    ]:
        n = int(rate * 0.25)
        x = 0.3 * np.sin(2 * np.pi * 330 * np.arange(n) / rate)[:, None] + 0.01 * rng.standard_normal((n, channels))
        buf = io.BytesIO()
        sf.write(buf, x.astype(np.float32), rate, format=fmt, subtype=subtype)
        out.append(buf.getvalue())
    return tuple(out)


@FAST
@given(st.binary(max_size=4096))
@example(b"")
@example(b"RIFF")
@example(b"fLaC" + b"\0" * 64)
@example(b"OggS" + b"\xff" * 64)
@example(b"ID3" + b"\0" * 32)
def test_arbitrary_bytes_decode_or_raise_a_typed_error(data):
    check_decode(data)


@FAST
@given(st.data())
def test_broken_real_files_decode_or_raise_a_typed_error(data):
    original = data.draw(st.sampled_from(valid_files()), label="file")
    blob = bytearray(original)
    # Overwrite a few bytes, biased towards the header where the parser makes its decisions.
    for _ in range(data.draw(st.integers(0, 8), label="edits")):
        where = data.draw(st.one_of(st.integers(0, min(len(blob), 128) - 1), st.integers(0, len(blob) - 1)))
        blob[where] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.just(len(blob)), st.integers(0, len(blob))), label="truncate at")
    check_decode(bytes(blob[:cut]))


@FAST
@given(
    rate=st.one_of(st.sampled_from([0, 1, 8_000, 16_000, 96_000, 768_000, 2**31 - 1, 2**32 - 1]),
                   st.integers(0, 2**32 - 1)),
    channels=st.one_of(st.sampled_from([0, 1, 2, 8, 64, 65, 1024, 65_535]), st.integers(0, 65_535)),
    bits=st.sampled_from([0, 1, 8, 12, 16, 24, 32, 64, 65_535]),
    tag=st.sampled_from([0, 1, 2, 3, 6, 7, 0x11, 0xFFFE, 0xFFFF]),
    data_len=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
    riff_len=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    payload=st.one_of(st.binary(max_size=2048), st.sampled_from(["nan", "inf", "huge"])),
)
@example(rate=8_000, channels=2, bits=32, tag=3, data_len=32_768, riff_len=None, payload="huge")  # found by atheris:
# two channels near float32's max overflowed to inf when mixed, and resampling made that NaN
def test_forged_wav_headers_decode_or_raise_a_typed_error(rate, channels, bits, tag, data_len, riff_len, payload):
    if isinstance(payload, str):  # float samples that no real recorder writes
        value = {"nan": np.nan, "inf": -np.inf, "huge": 3e38}[payload]
        payload = np.full(4096, value, dtype=np.float32).tobytes()
    check_decode(wav_header(rate=rate, channels=channels, bits=bits, tag=tag, data_len=data_len,
                            riff_len=riff_len) + payload)


def test_the_property_can_fail(monkeypatch):
    """``check_decode`` catches a decoder that leaks a raw exception or returns an unusable clip."""
    import sys

    from serq.worker.engine.audio import Audio

    check_decode(valid_files()[0])  # a real file passes
    module = sys.modules[__name__]

    def leaks(*_a, **_k):
        raise ValueError("raw")

    monkeypatch.setattr(module, "decode", leaks)
    with pytest.raises(ValueError):
        check_decode(b"x")
    nan = Audio(samples=np.full(MIN_SAMPLES, np.nan, np.float32), original_rate=16_000, channels=1, format="WAV")
    monkeypatch.setattr(module, "decode", lambda *_a, **_k: nan)
    with pytest.raises(AssertionError):
        check_decode(b"x")


# --------------------------------------------------------------------------- schemas


def contract_models() -> list[type[BaseModel]]:
    """Every pydantic model :mod:`serq.schemas` exports."""
    return [obj for name in schemas.__all__ if isinstance(obj := getattr(schemas, name), type)
            and issubclass(obj, BaseModel)]


def test_every_exported_schema_is_covered():
    names = {m.__name__ for m in contract_models()}
    # The messages on the wire must all be here (a new model is picked up automatically).
    assert {"PredictionResult", "ErrorReply", "TrainRequest", "TrainResult", "TrainProgress", "ModelActivated",
            "ClassifyHeaders", "EnrollResult", "TimelineChunkResult"} <= names


def from_json_schema(schema: dict, defs: dict | None = None) -> st.SearchStrategy:
    """Instances of a JSON Schema (the subset pydantic emits: $ref, anyOf, enum/const, bounds, patterns).

    hypothesis-jsonschema would do this, but it lags Hypothesis's internals; pydantic's
    schemas use a small vocabulary, so a few lines cover it.
    """
    from datetime import timezone

    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        return st.deferred(lambda: from_json_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs))
    if "anyOf" in schema:
        return st.one_of([from_json_schema(s, defs) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(2**53) - 1) + 1)
        return st.integers(low, schema.get("maximum", 2**53))
    if kind == "number":
        return st.floats(schema.get("minimum", schema.get("exclusiveMinimum")), schema.get("maximum"),
                         exclude_min="exclusiveMinimum" in schema, allow_nan=False, allow_infinity=False)
    if kind == "string":
        if schema.get("format") == "date-time":
            return st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.isoformat())
        low, high = schema.get("minLength", 0), schema.get("maxLength", 40)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda t: low <= len(t) <= high)
        return st.text(min_size=low, max_size=min(high, max(low, 40)))
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(from_json_schema(schema.get("items", {}), defs), min_size=low,
                        max_size=schema.get("maxItems", low + 4))
    if kind == "object" or "properties" in schema:
        props, required = schema.get("properties", {}), set(schema.get("required", []))
        fixed = st.fixed_dictionaries(
            {k: from_json_schema(v, defs) for k, v in props.items() if k in required},
            optional={k: from_json_schema(v, defs) for k, v in props.items() if k not in required})
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not props:  # a mapping, e.g. probabilities by label
            return st.dictionaries(st.text(min_size=1, max_size=12), from_json_schema(extra, defs), max_size=8)
        return fixed
    return json_values  # {}: anything


def instances(model: type[BaseModel]) -> st.SearchStrategy:
    """JSON instances of ``model``'s own JSON Schema (what the contract documents publish)."""
    return from_json_schema(model.model_json_schema(mode="validation"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def schema_examples(n: int):
    """Hypothesis settings of the tests that draw ``n`` instances of a schema (slow to generate, often filtered)."""
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])


def draw_instance(data, model: type[BaseModel]):
    return data.draw(instances(model), label="instance")


@pytest.mark.parametrize("model", contract_models(), ids=lambda m: m.__name__)
@schema_examples(20)
@given(data=st.data())
def test_schemas_round_trip_through_json(model, data):
    raw = draw_instance(data, model)
    try:
        obj = model.model_validate(raw)
    except ValidationError:
        assume(False)  # the JSON Schema cannot say everything a validator checks (e.g. hop <= window)
    again = model.model_validate_json(obj.model_dump_json(by_alias=True))
    assert again == obj
    assert again.model_dump_json(by_alias=True) == obj.model_dump_json(by_alias=True)


@pytest.mark.parametrize("model", contract_models(), ids=lambda m: m.__name__)
@settings(max_examples=30, deadline=None)
@given(garbage=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_schemas_refuse_garbage_with_validation_error_only(model, garbage):
    try:
        model.model_validate_json(garbage)
    except ValidationError:
        return
    # Accepted: only possible for models whose every field is optional, and then it must round-trip.
    assert not [f for f in model.model_fields.values() if f.is_required()], garbage


@pytest.mark.parametrize("model", contract_models(), ids=lambda m: m.__name__)
@schema_examples(15)
@given(data=st.data())
def test_schemas_refuse_broken_instances_with_validation_error_only(model, data):
    """A valid instance with one field replaced by an arbitrary JSON value: accepted or ValidationError."""
    raw = draw_instance(data, model)
    assume(isinstance(raw, dict) and raw)
    key = data.draw(st.sampled_from(sorted(raw)), label="field")
    raw[key] = data.draw(json_values, label="value")
    try:
        obj = model.model_validate_json(json.dumps(raw))
    except ValidationError:
        return
    assert model.model_validate_json(obj.model_dump_json(by_alias=True)) == obj
