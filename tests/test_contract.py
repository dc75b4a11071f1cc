"""The message contract: generated documents match the models; replies parse by type; topology keys."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from serq.schemas import ErrorInfo, ErrorReply, ModelActivated, PredictionResult
from serq.schemas.contract import (
    CHANNELS,
    OPERATIONS,
    REPLY_MODELS,
    ClassifyHeaders,
    error_key,
    messages,
    parse_reply,
    result_key,
    type_name,
)
from serq.schemas.generate import (
    ASYNCAPI,
    HERE,
    JSON_DIR,
    asyncapi,
    check,
    json_schemas,
    render,
    write,
)


def test_checked_in_documents_match_the_models():
    drift = check()
    assert drift == [], f"run `serq schemas generate`: {drift}"


def test_check_notices_a_changed_a_missing_and_a_stale_file(tmp_path):
    write(tmp_path)
    assert check(tmp_path) == []
    (tmp_path / JSON_DIR / "ErrorReply.json").write_text("{}")
    (tmp_path / JSON_DIR / "PredictionResult.json").unlink()
    (tmp_path / JSON_DIR / "Gone.json").write_text("{}")
    expected = sorted(f"{JSON_DIR}/{n}.json" for n in ("ErrorReply", "PredictionResult", "Gone"))
    assert sorted(check(tmp_path)) == expected
    assert sorted(write(tmp_path)) == expected
    assert check(tmp_path) == [] and not (tmp_path / JSON_DIR / "Gone.json").exists()


def test_every_json_schema_is_valid_and_accepts_its_model():
    schemas = json_schemas()
    for name, schema in schemas.items():
        jsonschema.Draft202012Validator.check_schema(schema)
    error = ErrorReply(error=ErrorInfo(code="too_long", message="61 s"), request_id="r1", worker="w")
    jsonschema.validate(json.loads(error.model_dump_json(exclude_none=True)), schemas["ErrorReply.json"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"error": {"code": "x"}}, schemas["ErrorReply.json"])  # message missing
    jsonschema.validate({"filename": "a.wav", "x-other": 1}, schemas["ClassifyHeaders.json"])


def test_asyncapi_document_is_complete_and_its_refs_resolve():
    doc = yaml.safe_load(render()[ASYNCAPI])
    assert doc == json.loads(json.dumps(asyncapi()))  # the YAML is the generated dict, nothing else
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["components"]["messages"]) == set(messages())
    assert {c.id for c in CHANNELS} == set(doc["channels"])
    assert {o.id for o in OPERATIONS} == set(doc["operations"])

    def resolve(ref: str):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(node["$ref"])  # KeyError = a dangling reference
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    classify = doc["channels"]["classify"]
    assert classify["address"] == "{prefix}.classify"
    assert classify["bindings"]["amqp"]["queue"]["x-arguments"]["x-queue-type"] == "quorum"
    request = doc["components"]["messages"]["ClassifyRequest"]
    assert request["payload"]["format"] == "binary" and request["contentType"] == "audio/*"
    reply = doc["operations"]["classify"]["reply"]
    assert reply["address"]["location"] == "$message.header#/reply_to"
    assert doc["components"]["messages"]["PredictionResult"]["bindings"]["amqp"]["messageType"] == "serq.PredictionResult"


def test_packaged_files_are_where_pyproject_says():
    assert (HERE / ASYNCAPI).is_file()
    assert {p.name for p in (HERE / JSON_DIR).glob("*.json")} == set(json_schemas())


def test_type_names_and_reply_parsing():
    assert type_name(PredictionResult) == "serq.PredictionResult"
    assert type_name(ModelActivated) == "serq.ModelActivated"
    assert set(REPLY_MODELS) >= {"serq.PredictionResult", "serq.ErrorReply"}
    error = ErrorReply(error=ErrorInfo(code="empty", message="0 bytes"))
    body = error.model_dump_json(exclude_none=True).encode()
    assert parse_reply(body, "serq.ErrorReply") == error
    assert parse_reply(body, None) == error  # without a type: by shape
    with pytest.raises(ValueError):
        parse_reply(b'{"nothing": 1}', None)


def test_headers_model_ignores_unknown_headers_but_checks_filename():
    assert ClassifyHeaders.model_validate({"filename": "a.wav", "x-delivery-count": 2}).filename == "a.wav"
    with pytest.raises(ValueError):
        ClassifyHeaders.model_validate({"filename": "x" * 300})


def test_routing_keys():
    assert result_key("angry") == "emotion.angry"
    assert result_key(None) == "emotion.silent"
    assert error_key("too_long") == "error.too_long"
