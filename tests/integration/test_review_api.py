"""The review server's API through Starlette's TestClient, on real SQLite and PostgreSQL, with
real audio files: the token, the 403s, path traversal, unknown ids, keyset pagination, labels.

The model version here has no weights on disk (member votes must say why they are missing);
tests/integration/test_review_browser.py runs a real trained model, Spleeter and Chromium.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from pipeline.frontend import FrontendConfig
from scorer.db import queries
from scorer.db.engine import make_sessionmaker
from scorer.db.models import FILE_WINDOW, LabelEvent, ModelVersion, Snippet
from scorer.review import store
from scorer.review.app import build_app
from scorer.settings import Settings

CLASSES = ["none", "male", "female", "multi"]
TOKEN = "t0ken-for-tests_0123456789abcdef"
SR = 16_000
# (predicted class, entropy, disagreement, windows): two share an entropy (the id breaks ties)
VERDICTS = [
    ("male", 1.2, 0.10, 1),
    ("female", 0.3, 0.40, 1),
    ("male", 0.9, 0.00, 4),
    ("none", 0.9, 0.20, 1),
    ("multi", 0.05, 0.05, 1),
    ("female", 1.3, 0.30, 2),
    ("none", 0.6, 0.60, 1),
]


def _wav(path: Path, seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.2 * np.sin(2 * np.pi * (150 + 20 * seed) * t) + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")
    return path.read_bytes()


def _probabilities(label: str) -> list[float]:
    p = [0.1] * len(CLASSES)
    p[CLASSES.index(label)] = 0.7
    return p


def populate(engine: Engine, folder: Path) -> dict[str, Any]:
    """A model version, seven scored snippets with real files, returns ids and paths."""
    sessions = make_sessionmaker(engine)
    out: dict[str, Any] = {"ids": [], "paths": [], "shas": []}
    with sessions() as s:
        fe = FrontendConfig()
        model = ModelVersion(
            name="v1", classes=CLASSES, frontend_version=fe.version, frontend=fe.to_dict(),
            members=3, params={}, metrics={}, weights_uri="not-here-v1", active=True,
        )  # fmt: skip
        s.add(model)
        s.flush()
        for i, (label, entropy, disagreement, n_windows) in enumerate(VERDICTS):
            path = folder / f"song {i}.wav"
            sha = hashlib.sha256(_wav(path, 3.0 * n_windows, i)).hexdigest()
            queries.add_snippets(
                s, [{"sha256": sha, "source_path": str(path), "size_bytes": 1,
                     "duration_s": 3.0 * n_windows}],
            )  # fmt: skip
            queries.add_source_paths(s, [(str(path), sha)])
            rows = [
                {"sha256": sha, "window_index": FILE_WINDOW, "start_s": 0.0,
                 "model_version_id": model.id, "probabilities": _probabilities(label),
                 "label": label, "confidence": 0.7, "disagreement": disagreement,
                 "entropy": entropy},
            ] + [
                {"sha256": sha, "window_index": w, "start_s": 3.0 * w,
                 "model_version_id": model.id, "probabilities": _probabilities(label),
                 "label": label, "confidence": 0.7, "disagreement": disagreement,
                 "entropy": entropy}
                for w in range(n_windows)
            ]  # fmt: skip
            queries.upsert_predictions(s, rows)
            s.flush()
            out["ids"].append(s.scalar(select(Snippet.id).where(Snippet.sha256 == sha)))
            out["paths"].append(path)
            out["shas"].append(sha)
        s.commit()
        out["model_id"] = model.id
    return out


@pytest.fixture
def review(engine: Engine, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    data = populate(engine, tmp_path / "music")
    settings = Settings(data_dir=tmp_path / "data", device="cpu", torch_threads=1)
    app = build_app(settings, engine, TOKEN)
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client, data


def api(client: TestClient, path: str, **kw: Any) -> Any:
    return client.get(f"/{TOKEN}/api/{path}", **kw)


# --- the token ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/", "/queue", "/api/queue", "/static/review.js", "/api/snippets/1/original",
        f"/queue?token={TOKEN}", f"/{TOKEN[:-1]}/queue", f"/{TOKEN}x/queue",
        f"/x/{TOKEN}/queue", f"/{TOKEN.upper()}/queue", f"/%2F{TOKEN}/queue",
    ],
)  # fmt: skip
def test_every_request_without_the_token_is_forbidden(
    review: tuple[TestClient, dict], path: str
) -> None:
    client, _ = review
    response = client.get(path)
    assert response.status_code == 403
    assert "scorer review" in response.text


def test_a_label_write_without_the_token_is_forbidden_and_writes_nothing(
    review: tuple[TestClient, dict], engine: Engine
) -> None:
    client, data = review
    response = client.post(f"/api/snippets/{data['ids'][0]}/label", json={"label": "male"})
    assert response.status_code == 403
    with make_sessionmaker(engine)() as s:
        assert s.scalars(select(LabelEvent)).all() == []


def test_pages_scripts_and_styles_come_from_the_server_itself(
    review: tuple[TestClient, dict],
) -> None:
    client, data = review
    home = client.get(f"/{TOKEN}/", follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"].endswith(f"/{TOKEN}/queue")
    for path in ("queue", "summary", f"snippet/{data['ids'][0]}"):
        page = client.get(f"/{TOKEN}/{path}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text and "https://" not in page.text  # no CDN
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
    js = client.get(f"/{TOKEN}/static/review.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert client.get(f"/{TOKEN}/static/review.css").status_code == 200


def test_another_host_name_is_refused(review: tuple[TestClient, dict]) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: refused even with the token."""
    client, _ = review
    assert client.get(f"/{TOKEN}/api/queue", headers={"host": "evil.example"}).status_code == 400


# --- paths: none from the request ----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "static/..%2Fapp.py", "static/%2e%2e%2fapp.py", "static/..%2F..%2F..%2Fetc%2Fpasswd",
        "static/%2Fetc%2Fpasswd", "static//etc/passwd", "static/app.py", "static/__init__.py",
        "api/snippets/..%2F..%2Fetc%2Fpasswd/original", "api/snippets/%2Fetc%2Fpasswd/original",
        "api/snippets/1%2F..%2F..%2Fetc%2Fpasswd/original", "api/snippets/-1/original",
        "api/snippets/999999/original", "api/snippets/999999/vocals", "api/snippets/999999",
        "api/snippets/999999/members", "snippet/999999", "snippet/..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd",
    ],
)  # fmt: skip
def test_paths_and_unknown_ids_in_the_url_are_not_found(
    review: tuple[TestClient, dict], path: str
) -> None:
    client, _ = review
    response = client.get(f"/{TOKEN}/{path}")
    assert response.status_code == 404, response.text
    assert "root:" not in response.text and "import" not in response.text


def test_a_path_in_a_query_parameter_is_ignored(review: tuple[TestClient, dict]) -> None:
    client, data = review
    first = data["ids"][0]
    for param in ("path", "file", "name", "src"):
        response = api(client, f"snippets/{first}/original", params={param: "/etc/passwd"})
        assert response.status_code == 200
        assert response.content == data["paths"][0].read_bytes()


def test_unknown_ids_and_bad_parameters(review: tuple[TestClient, dict]) -> None:
    client, data = review
    first = data["ids"][0]
    assert api(client, "queue", params={"model": "999"}).status_code == 404
    assert api(client, "summary", params={"model": "nope"}).status_code == 404
    for params in (
        {"sort": "path"}, {"predicted": "robot"}, {"truth": "../x"}, {"reviewed": "maybe"},
        {"limit": "0"}, {"limit": "100000"}, {"limit": "-5"}, {"after": "/etc/passwd"},
        {"after": "nan_3"}, {"after": "1.0_x"},
    ):  # fmt: skip
        response = api(client, "queue", params=params)
        assert response.status_code == 400, params
        assert response.json()["error"]
    label = f"/{TOKEN}/api/snippets/{first}/label"
    assert client.post(label, json={"label": "robot"}).status_code == 400
    assert client.post(label, content=b"not json").status_code == 400
    assert client.post(label, json=["male"]).status_code == 400
    assert client.get(label).status_code == 405
    assert (
        client.post(f"/{TOKEN}/api/snippets/999999/label", json={"label": "male"}).status_code
        == 404
    )


# --- the queue ---------------------------------------------------------------------------------


def _all_pages(client: TestClient, limit: int, **params: str) -> list[dict]:
    items: list[dict] = []
    after = None
    while True:
        page = api(
            client,
            "queue",
            params={**params, "limit": limit, **({"after": after} if after else {})},
        )
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        after = body["next"]
        if after is None:
            return items


@pytest.mark.parametrize("sort", ["entropy", "disagreement"])
def test_keyset_pages_list_each_verdict_once_least_certain_first(
    review: tuple[TestClient, dict], sort: str
) -> None:
    client, data = review
    column = {"entropy": 1, "disagreement": 2}[sort]
    by_id = dict(zip(data["ids"], VERDICTS, strict=True))
    expected = sorted(data["ids"], key=lambda i: (by_id[i][column], i), reverse=True)
    for limit in (1, 2, 3, 7, 50):
        items = _all_pages(client, limit, sort=sort)
        assert [it["id"] for it in items] == expected, limit
    first = _all_pages(client, 50, sort=sort)[0]
    assert first["path"] == str(data["paths"][data["ids"].index(first["id"])])


@pytest.mark.parametrize("selective", [store.SELECTIVE, 0])
def test_queue_filters(
    review: tuple[TestClient, dict], monkeypatch: pytest.MonkeyPatch, selective: int
) -> None:
    """Both ways to read a filtered page: by the few matching shas, and in index order."""
    monkeypatch.setattr(store, "SELECTIVE", selective)
    client, data = review
    males = _all_pages(client, 2, predicted="male")
    assert {it["predicted"] for it in males} == {"male"} and len(males) == 2
    target = data["ids"][1]
    response = client.post(f"/{TOKEN}/api/snippets/{target}/label", json={"label": "multi"})
    assert response.status_code == 200
    reviewed = _all_pages(client, 3, reviewed="yes")
    assert [(it["id"], it["truth"], it["reviewed"]) for it in reviewed] == [(target, "multi", True)]
    assert target not in {it["id"] for it in _all_pages(client, 3, reviewed="no")}
    assert [it["id"] for it in _all_pages(client, 3, truth="multi")] == [target]
    assert len(_all_pages(client, 3, truth="unlabelled")) == len(VERDICTS) - 1
    for i, label in ((0, "male"), (2, "male"), (3, "female"), (5, "male")):
        client.post(f"/{TOKEN}/api/snippets/{data['ids'][i]}/label", json={"label": label})
    by_id = dict(zip(data["ids"], VERDICTS, strict=True))
    males = [data["ids"][i] for i in (0, 2, 5)]
    expected = sorted(males, key=lambda i: (by_id[i][1], i), reverse=True)
    for limit in (1, 2, 5):
        assert [it["id"] for it in _all_pages(client, limit, truth="male", reviewed="yes")] == (
            expected
        )


# --- one snippet, labels, summary ----------------------------------------------------------------


def test_snippet_detail(review: tuple[TestClient, dict]) -> None:
    client, data = review
    long_one = data["ids"][2]  # 4 windows
    d = api(client, f"snippets/{long_one}").json()
    assert d["paths"] == [str(data["paths"][2])]
    assert d["verdict"]["label"] == "male" and d["verdict"]["probabilities"] == _probabilities(
        "male"
    )
    assert [w["start_s"] for w in d["windows"]] == [0.0, 3.0, 6.0, 9.0]
    assert d["model"]["classes"] == CLASSES and d["truth"] is None


def test_member_votes_say_why_they_are_missing(review: tuple[TestClient, dict]) -> None:
    client, data = review
    body = api(client, f"snippets/{data['ids'][0]}/members").json()
    assert "no cached features" in body["unavailable"]


def test_original_audio_is_the_verified_file_with_ranges(review: tuple[TestClient, dict]) -> None:
    client, data = review
    first, path = data["ids"][0], data["paths"][0]
    whole = api(client, f"snippets/{first}/original")
    assert whole.status_code == 200 and whole.content == path.read_bytes()
    assert whole.headers["content-type"] == "audio/wav"
    part = api(client, f"snippets/{first}/original", headers={"range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == path.read_bytes()[:100]


def test_a_changed_file_is_not_served_another_copy_is(
    review: tuple[TestClient, dict], engine: Engine
) -> None:
    """The server serves only bytes whose sha256 is the snippet's: a file changed since it was
    scored is refused, and another path of the same content is used instead."""
    client, data = review
    first, path, sha = data["ids"][0], data["paths"][0], data["shas"][0]
    copy = path.with_name("copy.wav")
    shutil.copy(path, copy)
    path.write_bytes(b"RIFF changed since")
    assert api(client, f"snippets/{first}/original").status_code == 404
    with make_sessionmaker(engine)() as s:
        queries.add_source_paths(s, [(str(copy), sha)])
        s.commit()
    response = api(client, f"snippets/{first}/original")
    assert response.status_code == 200 and response.content == copy.read_bytes()


def test_a_label_is_saved_at_once_and_logged(
    review: tuple[TestClient, dict], engine: Engine
) -> None:
    client, data = review
    target = data["ids"][0]  # predicted male
    for label in ("female", "male"):
        response = client.post(f"/{TOKEN}/api/snippets/{target}/label", json={"label": label})
        assert response.status_code == 200 and response.json()["label"] == label
    with make_sessionmaker(engine)() as s:
        snippet = s.get(Snippet, target)
        assert snippet is not None
        assert (snippet.label, snippet.label_origin) == ("male", "review")
        events = s.scalars(select(LabelEvent).order_by(LabelEvent.id)).all()
    assert [(e.label, e.previous_label, e.predicted_label) for e in events] == [
        ("female", None, "male"), ("male", "female", "male"),
    ]  # fmt: skip
    assert events[0].model_version_id == data["model_id"]


def test_summary_counts_accuracy_and_confusion(review: tuple[TestClient, dict]) -> None:
    client, data = review
    assert api(client, "summary").json()["accuracy"] is None
    # snippet 0 predicted male (right), 1 predicted female (labelled multi: wrong)
    for i, label in ((0, "male"), (1, "multi")):
        client.post(f"/{TOKEN}/api/snippets/{data['ids'][i]}/label", json={"label": label})
    s = api(client, "summary").json()
    assert s["reviewed"] == 2 and s["accuracy"] == 0.5 and s["corrections"] == 2
    cm = np.array(s["confusion_matrix"])
    assert cm[CLASSES.index("male"), CLASSES.index("male")] == 1
    assert cm[CLASSES.index("multi"), CLASSES.index("female")] == 1
    assert cm.sum() == 2
    assert s["predicted"] == {"male": 2, "female": 2, "none": 2, "multi": 1}
    assert s["labels"] == {"male": {"data": 0, "review": 1}, "multi": {"data": 0, "review": 1}}


def test_vocals_of_a_file_too_long_to_separate_on_the_page_are_refused_with_the_reason(
    review: tuple[TestClient, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from scorer.review import audio

    monkeypatch.setattr(audio, "VOCALS_MAX_S", 1.0)
    client, data = review
    response = api(client, f"snippets/{data['ids'][0]}/vocals")
    assert response.status_code == 422
    assert "too long to separate on the page" in response.json()["error"]
