"""Input fuzzing of the inference server: no request may get a 5xx, crash the server, or get a
response its OpenAPI schema does not describe.

Schemathesis drives every operation from the server's own OpenAPI document (valid and invalid
inputs alike). Backend and layer names are free strings there, so random ones stop at a 404; the
Hypothesis tests below use the real names to push odd inputs all the way into rendering, image
decoding and measuring. The toy world's backends keep each request cheap, and tight
``ServiceLimits`` bound what any generated request can ask for.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import checks

from inference.app import create_app, start_server_thread
from inference.registry import GeneratorOptions, load_generator, load_target
from inference.service import (
    MAX_SEED,
    BatchingConfig,
    InferenceService,
    ServiceLimits,
    open_service,
)
from inference.store import upload_id
from toyworld.procedural import render_prompt

GENERATOR = "procedural:shapes"
TARGET = "planted:shapes"
LAYERS = ("planted", "features")
TOKEN = "fuzz-token"
LIMITS = ServiceLimits(
    max_images_per_request=4,
    max_prompt_chars=120,
    max_side=128,
    max_steps=8,
    max_upload_bytes=200_000,
)

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
"""Bounded and deterministic: the same examples on every run, no timing-based health checks."""

# The OpenAPI document depends on the routes only, so it is read from an app without backends;
# the tests send the generated requests to real servers.
SCHEMA = schemathesis.openapi.from_dict(create_app(service=None).openapi())  # type: ignore[arg-type]
RESPONSE_CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


def _file(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _pool_images() -> dict[str, bytes]:
    """Small image files of odd sizes and modes, plus two toy-world renders."""
    noise = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    files = {
        "1x1": _file(Image.new("RGB", (1, 1)), "PNG"),
        "3x150": _file(Image.new("RGB", (3, 150), (255, 0, 0)), "PNG"),
        "grey": _file(Image.new("L", (20, 20), 128), "PNG"),
        "rgba": _file(Image.new("RGBA", (20, 20), (0, 0, 255, 0)), "PNG"),
        "palette": _file(Image.new("P", (20, 20)), "GIF"),
        "16-bit": _file(Image.new("I;16", (20, 20)), "PNG"),
        "noise": _file(Image.fromarray(noise), "JPEG"),
    }
    for prompt in ("a red circle", "three blue striped squares"):
        files[prompt] = _file(render_prompt(prompt, 1, 64, 64).image, "PNG")
    return files


POOL = _pool_images()
POOL_IDS = [upload_id(data) for data in POOL.values()]
SEED_FILES = {
    fmt: _file(Image.new("RGB", (12, 10), (200, 30, 30)), fmt)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM")
}
# Corrupt files that made Pillow raise something other than the ValueError the store promises.
BROKEN_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x0c\x00\x00\x00\n\x08\x02\x00\x00\x00\x0fN"
    b"(\xad\x00\x00\x00\x16IDATx\x9cc<!'\xc7@\x080\x16T1\xaa\x88hE\x00\x86_\x01\x18\xd5Fv]\x00"
    b"\x00\x00\x00\x0cEND\xaeB`\x82"
)  # a flipped IDAT byte and a broken IEND chunk type: SyntaxError
BROKEN_TIFF = SEED_FILES["TIFF"].replace(b"\x11\x01\x04\x00", b"\x11\x01\x0a\x00", 1)
# StripOffsets (tag 0x111) typed RATIONAL instead of LONG: TypeError


def _service(folder) -> InferenceService:
    return open_service(
        [load_generator(GENERATOR, "cpu", GeneratorOptions(width=64, height=64))],
        [load_target(TARGET, "cpu")],
        folder,
        batching=BatchingConfig(max_batch=8, max_wait_ms=1),
        limits=LIMITS,
    )


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    """A token-less loopback server with the pool images already uploaded."""
    running = start_server_thread(create_app(_service(tmp_path_factory.mktemp("fuzz-store"))))
    images = [base64.b64encode(data).decode() for data in POOL.values()]
    with httpx.Client(base_url=running.url, timeout=60) as http:
        for start in range(0, len(images), LIMITS.max_images_per_request):
            chunk = images[start : start + LIMITS.max_images_per_request]
            response = http.post("/v1/images/upload", json={"images": chunk})
            assert response.status_code == 200, response.text
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    running = start_server_thread(
        create_app(_service(tmp_path_factory.mktemp("fuzz-token-store")), TOKEN)
    )
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def token_http(token_server):
    with httpx.Client(base_url=token_server, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def http(fuzz_server):
    with httpx.Client(base_url=fuzz_server, timeout=60) as client:
        yield client


def post_json(http: httpx.Client, path: str, body: object) -> httpx.Response:
    """POST ``body`` as Python's json writes it: lone surrogates as \\ud800 escapes, NaN, ..."""
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def assert_handled(response: httpx.Response) -> None:
    """A 2xx, or a 4xx whose JSON says what is wrong."""
    sent = response.request.content[:300]
    assert response.status_code < 500, (response.status_code, response.text[:300], sent)
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail, response.text


# ----- schemathesis ------------------------------------------------------------------------------
@SCHEMA.parametrize()
@FUZZ
def test_no_input_gets_a_server_error_or_an_undocumented_response(case, fuzz_server):
    case.call_and_validate(base_url=fuzz_server, checks=RESPONSE_CHECKS, timeout=60)


@SCHEMA.parametrize()
@settings(FUZZ, max_examples=10)
def test_without_the_token_every_request_is_refused(case, token_server):
    response = case.call(base_url=token_server, timeout=60)
    assert response.status_code == 401, (response.status_code, response.text[:500])
    assert "Authorization: Bearer <token>" in response.json()["detail"]


# ----- Hypothesis with the real backend names ----------------------------------------------------
# Each request has at most one odd field, so most get past validation into the backends.
WORDS = ["a", "red", "blue", "green", "circle", "square", "star", "three", "large", "striped"]
words = st.lists(st.sampled_from([*WORDS, "and", "or", "no", "many"]), min_size=1, max_size=6)
odd_ints = st.integers(-1, MAX_SEED + 1) | st.integers()
any_text = st.text(st.characters(exclude_categories=[]), max_size=20)
"""Any code points, NUL and lone surrogates included (Python's json writes those as escapes)."""
odd_sides = st.sampled_from([-8, 0, 8, 12, 15, 17, 136, 2**31, 2**63]) | st.integers()
RENDER_SETTINGS = {  # name: (usual values, odd values)
    "generator": (st.just(GENERATOR), any_text),
    "width": (st.sampled_from([16, 24, 64, 128]), odd_sides),
    "height": (st.sampled_from([16, 24, 64, 128]), odd_sides),
    "steps": (st.integers(1, LIMITS.max_steps), st.integers()),
    "guidance": (st.floats(0, 100), st.floats()),
}


@st.composite
def image_requests(draw):
    """A render request with at most one odd field."""
    odd = draw(st.sampled_from([None, "prompts", "seeds", *RENDER_SETTINGS]))
    count = draw(st.integers(0, LIMITS.max_images_per_request + (odd == "prompts")))
    prompt = words.map(" ".join)
    if odd == "prompts":
        prompt = any_text | st.text(max_size=LIMITS.max_prompt_chars + 1)
    seed = odd_ints if odd == "seeds" else st.integers(0, 3)
    body = {
        "prompts": draw(st.lists(prompt, min_size=count, max_size=count)),
        "seeds": draw(st.lists(seed, min_size=count, max_size=count + (odd == "seeds"))),
    }
    for name, (usual, unusual) in RENDER_SETTINGS.items():
        if odd == name:
            body[name] = draw(unusual)
        elif draw(st.booleans()):
            body[name] = draw(usual)
    return body


@FUZZ
@given(body=image_requests())
def test_odd_render_requests_are_refused_or_rendered(http, body):
    response = post_json(http, "/v1/images", body)
    assert_handled(response)
    if response.status_code == 200:
        images = response.json()["images"]
        assert [image["prompt"] for image in images] == body["prompts"]


@st.composite
def activation_requests(draw):
    """An activations request on the pool's images with at most one odd field."""
    odd = draw(st.sampled_from([None, "target", "layer", "image_ids", "units"]))
    image_id = st.sampled_from(POOL_IDS)
    if odd == "image_ids":
        image_id = st.text("0123456789abcdef", min_size=64, max_size=64) | any_text
    count = draw(st.integers(1 - (odd == "image_ids"), LIMITS.max_images_per_request))
    body = {
        "target": draw(any_text) if odd == "target" else TARGET,
        "layer": draw(any_text if odd == "layer" else st.sampled_from(LAYERS)),
        "image_ids": draw(
            st.lists(image_id, min_size=count, max_size=count + (odd == "image_ids"))
        ),
    }
    if odd == "units" or draw(st.booleans()):
        body["units"] = draw(st.lists(odd_ints if odd == "units" else st.integers(0, 20)))
    return body


@FUZZ
@given(body=activation_requests())
def test_odd_activation_requests_are_refused_or_measured(http, body):
    response = post_json(http, "/v1/activations", body)
    assert_handled(response)
    if response.status_code == 200:
        rows = response.json()["activations"]
        assert len(rows) == len(body["image_ids"])
        assert all(np.isfinite(row).all() for row in rows)


@st.composite
def mutated_files(draw) -> bytes:
    """A small image file with a few bytes replaced, cut out or inserted."""
    data = bytearray(draw(st.sampled_from([*SEED_FILES.values(), *POOL.values()])))
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["set", "cut", "insert"]))
        if kind == "set" and where < len(data):
            data[where] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[where : where + draw(st.integers(1, 16))]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@st.composite
def upload_requests(draw):
    """An upload of (mostly damaged) image files with at most one odd field."""
    odd = draw(st.sampled_from([None, "images", "names"]))
    image = mutated_files().map(lambda data: base64.b64encode(data).decode())
    if odd == "images":
        image = any_text | st.binary(max_size=64).map(base64.b64encode).map(bytes.decode)
    count = draw(st.integers(1, LIMITS.max_images_per_request))
    body = {"images": draw(st.lists(image, min_size=count, max_size=count + (odd == "images")))}
    if odd == "names":
        body["names"] = draw(st.lists(any_text, max_size=count + 1))
    elif draw(st.booleans()):
        body["names"] = draw(st.lists(words.map(" ".join), min_size=count, max_size=count))
    return body


@FUZZ
@given(body=upload_requests())
def test_odd_uploads_are_refused_or_stored(http, body):
    response = post_json(http, "/v1/images/upload", body)
    assert_handled(response)
    if response.status_code == 200:
        assert len(response.json()["ids"]) == len(body["images"])


@settings(FUZZ, max_examples=60)
@given(header=st.binary(min_size=1, max_size=40))
def test_odd_authorization_headers_get_401(token_http, header):
    # Bytes a client can send in a header value: no control characters, no edge spaces.
    value = bytes(byte for byte in header if byte >= 0x21 and byte != 0x7F) or b"-"
    response = token_http.get("/v1/models", headers={"Authorization": b"Bearer " + value})
    if value == TOKEN.encode():
        assert response.status_code == 200
    else:
        assert response.status_code == 401, (response.status_code, response.text[:300])


# ----- the bugs fuzzing found, pinned ------------------------------------------------------------
def test_sizes_below_what_every_backend_renders_are_refused(http):
    """procedural:shapes renders 16 px and up; 8 px used to fail inside it with a 500."""
    for side in ("width", "height"):
        response = http.post(
            "/v1/images", json={"prompts": ["a red circle"], "seeds": [1], side: 8}
        )
        assert response.status_code == 422, response.text
        assert f"{side}: Input should be greater than or equal to 16" in response.json()["detail"]
    smallest = {"prompts": ["a red circle"], "seeds": [1], "width": 16, "height": 16}
    assert http.post("/v1/images", json=smallest).status_code == 200
    too_big = {"prompts": ["a red circle"], "seeds": [1], "width": 4096}
    response = http.post("/v1/images", json=too_big)
    assert response.status_code == 400
    assert "width must be a multiple of 8 from 16 to 128, got 4096" in response.json()["detail"]


def test_text_that_cannot_be_stored_is_refused_with_a_reason(http):
    """A lone surrogate in a prompt used to crash image hashing (a 500)."""
    cases = [
        ({"prompts": ["a \ud800 circle"], "seeds": [1]}, "prompts.0: Value error, must be valid"),
        (
            {"prompts": ["a\x00circle"], "seeds": [1]},
            "prompts.0: Value error, must not contain NUL",
        ),
        ({"images": [], "names": ["\ud83d"]}, "names.0: Value error, must be valid Unicode"),
        (
            {"target": TARGET, "layer": "x\x00", "image_ids": POOL_IDS[:1]},
            "layer: Value error, must not contain NUL",
        ),
    ]
    for body, message in cases:
        path = "/v1/images/upload" if "images" in body else "/v1/images"
        path = "/v1/activations" if "target" in body else path
        response = post_json(http, path, body)
        assert response.status_code == 422, (body, response.text)
        assert message in response.json()["detail"]
    for guidance in ("NaN", "Infinity", "-Infinity", "1e400"):
        content = f'{{"prompts": ["a"], "seeds": [1], "guidance": {guidance}}}'
        response = http.post(
            "/v1/images", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert "guidance must be from 0 to 100" in response.json()["detail"]


def test_corrupt_uploads_are_refused_as_unreadable(http):
    """Pillow raises SyntaxError or TypeError on some corrupt files; they used to be 500s."""
    for index, data in enumerate([BROKEN_PNG, BROKEN_TIFF]):
        files = [POOL["grey"]] * index + [data]  # the broken file is image 0, then image 1
        images = [base64.b64encode(file).decode() for file in files]
        response = http.post("/v1/images/upload", json={"images": images})
        assert response.status_code == 400, response.text
        assert f"image {index}: not a readable image file" in response.json()["detail"]


def test_a_non_ascii_authorization_header_is_refused_not_crashed(token_http):
    """compare_digest refuses non-ASCII str: a Latin-1 byte in the header used to be a 500."""
    for value in [b"Bearer \xff", "Bearer fuzz-tökén".encode(), b"Bearer \xe2\x82\xac"]:
        response = token_http.get("/v1/models", headers={"Authorization": value})
        assert response.status_code == 401, response.text
    ok = token_http.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200


def test_thin_uploads_are_refused_before_a_target_blows_them_up(http):
    """Targets scale the short side to ~224 px: a 1x2000 PNG took seconds (planted:shapes) and
    hundreds of MB (torchvision's Resize(256)); 1x100000 would take gigabytes."""
    thin = base64.b64encode(_file(Image.new("RGB", (1, 2000)), "PNG")).decode()
    response = http.post("/v1/images/upload", json={"images": [thin]})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "image 0 is 1x2000 pixels; an image's long side may be at most 128 times" in detail
    widest = base64.b64encode(_file(Image.new("RGB", (2, 256)), "PNG")).decode()
    assert http.post("/v1/images/upload", json={"images": [widest]}).status_code == 200
