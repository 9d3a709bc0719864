"""Every route of the API server and of the studio, walked from their OpenAPI schemas, with one
field, query parameter, path parameter or uploaded file at a time replaced by a hostile value.
No answer may be a 5xx other than 503 (busy), no connection may drop, and both servers must be
healthy at the end. A new route is covered the day it is added. (This walk found a studio list
that answered 500 to ``page=10**20``.)"""

from __future__ import annotations

import copy
import json
import re
import urllib.parse

import httpx

from tests.conftest import REF_TEXT
from tests.server_support import b64, start_server, store_voice

JSON_VALUES = [
    None,
    "",
    "x" * 100_000,
    -1,
    0,
    2**64,
    -(2**64),
    1e308,
    0.5,
    True,
    [],
    {},
    [[[[]]]],
    {"a": {"b": {}}},
]
JSON_VALUES += ["\u0000", "\ud800", "../../etc/passwd", "NaN", "\u202e", "😀" * 1000, " " * 10]
RAW_BODIES = [
    b"",
    b"null",
    b"[]",
    b"{",
    b'{"text": NaN}',
    b'{"text": Infinity}',
    b"\xff\xfe",
    b'"s"',
    b"1e999999",
]
TEXT_VALUES = ["", "x" * 20_000, "-1", "0", "99999999999999999999", "1e308", "NaN", "true", "\x00"]
TEXT_VALUES += ["../../etc/passwd", "%2e%2e%2f", "😀" * 100, " ", "null", "[]", "Ada\nInjected: 1"]


class Walker:
    """Sends the hostile requests of one app and keeps what went wrong."""

    def __init__(self, http: httpx.Client, spec: dict, known: dict[str, str], audio: bytes) -> None:
        self.http, self.spec, self.known, self.audio = http, spec, known, audio
        self.schemas = spec.get("components", {}).get("schemas", {})
        self.problems: list[tuple] = []
        self.sent = 0

    def send(self, what: tuple, method: str, url: str, **kwargs) -> None:
        self.sent += 1
        try:
            r = self.http.request(method, url, **kwargs)
        except httpx.InvalidURL:  # too long for the client to send at all
            return
        except httpx.TransportError as exc:  # the server dropped the connection: as bad as a 500
            self.problems.append((*what, repr(exc)[:120]))
            return
        if r.status_code >= 500 and r.status_code != 503:
            self.problems.append((*what, r.status_code, r.text[:160]))

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"].rsplit("/", 1)[-1]]
        if "anyOf" in schema:
            schema = self.resolve(next(s for s in schema["anyOf"] if s.get("type") != "null"))
        return schema

    def example(self, schema: dict, name: str = "") -> object:
        """A plausible value: so that each request fails, if it does, on the field changed."""
        schema = self.resolve(schema)
        if schema.get("default") is not None:
            return schema["default"]
        kind = schema.get("type")
        if "enum" in schema:
            return schema["enum"][0]
        if kind == "string":
            return next((v for k, v in self.known.items() if k in name), "Hello there.")
        if kind in ("integer", "number"):
            return max(schema.get("minimum", 1), 1)
        if kind == "boolean":
            return False
        if kind == "array":
            return [self.example(schema.get("items", {}), name)]
        if kind == "object":
            return {k: self.example(v, k) for k, v in schema.get("properties", {}).items()}
        return None

    def path_with(self, path: str, value: str) -> str:
        return re.sub(r"\{[^}]+\}", value, path)

    def walk(self) -> None:
        for path, methods in self.spec["paths"].items():
            for method, op in methods.items():
                method = method.upper()
                if method == "DELETE":  # deleting what the walk stands on would end it early
                    continue
                if "{" in path:
                    for value in TEXT_VALUES:
                        quoted = urllib.parse.quote(value[:3000], safe="") or "%20"
                        self.send((method, path, "path", value[:20]), method, self.path_with(path, quoted))
                real = self.path_with(path, self.known["id"])
                for param in op.get("parameters", []):
                    if param["in"] == "query":
                        for value in TEXT_VALUES:
                            what = (method, path, param["name"], value[:20])
                            self.send(what, method, real, params={param["name"]: value})
                content = op.get("requestBody", {}).get("content", {})
                if "application/json" in content:
                    self.json_body(method, real, path, content["application/json"]["schema"])
                if "multipart/form-data" in content:
                    self.form(method, real, path, content["multipart/form-data"]["schema"])

    def json_body(self, method: str, url: str, path: str, schema: dict) -> None:
        base = self.example(schema)
        for field in self.resolve(schema).get("properties", {}) if isinstance(base, dict) else []:
            for value in JSON_VALUES:
                body = copy.deepcopy(base)
                body[field] = value
                raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
                headers = {"content-type": "application/json"}
                self.send((method, path, field, repr(value)[:20]), method, url, content=raw, headers=headers)
        for raw in RAW_BODIES:
            headers = {"content-type": "application/json"}
            self.send((method, path, "raw", raw[:10]), method, url, content=raw, headers=headers)

    def form(self, method: str, url: str, path: str, schema: dict) -> None:
        schema = self.resolve(schema)
        files = [
            k for k, v in schema.get("properties", {}).items() if self.resolve(v).get("format") == "binary"
        ]
        fields = [k for k in schema.get("properties", {}) if k not in files]
        base = {k: str(self.example(schema["properties"][k], k)) for k in fields}
        good = {k: ("a.wav", self.audio, "audio/wav") for k in files}
        for upload in [
            b"",
            b"RIFF" + b"\x00" * 100,
            b"\xff" * 5000,
            self.audio[:100],
            b"fLaC" + b"\x00" * 200,
        ]:
            bad = {k: ("a.wav", upload, "audio/wav") for k in files}
            self.send((method, path, "file", upload[:8]), method, url, data=base, files=bad or None)
        for field in fields:
            for value in TEXT_VALUES:
                data = {**base, field: value}
                self.send((method, path, field, value[:20]), method, url, data=data, files=good or None)


def test_the_api_server_answers_every_hostile_request_with_a_4xx(engine, ref_wav, tmp_path) -> None:
    server = start_server(engine, tmp_path, max_frames=8)
    try:
        with server.client(timeout=60) as http:
            voice = store_voice(http, ref_wav, "Ada")
            known = {
                "voice": "Ada",
                "lang": "English",
                "base64": b64(ref_wav.read_bytes()),
                "ref_text": REF_TEXT,
            }
            walker = Walker(
                http, http.get("/openapi.json").json(), {**known, "id": voice["id"]}, ref_wav.read_bytes()
            )
            walker.walk()
            assert walker.sent > 1500 and not walker.problems, walker.problems[:20]
            assert http.get("/health").json()["status"] == "healthy"
    finally:
        server.stop()
