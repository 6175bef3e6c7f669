"""Security headers: every /ui response carries them, a page's own value wins, the API is left alone."""

from fastapi.testclient import TestClient

from collector.web import CSP


def test_ui_responses_carry_the_security_headers(client: TestClient) -> None:
    r = client.get("/ui/login")
    assert r.status_code == 200
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"
    assert r.headers["cache-control"] == "no-store"


def test_static_files_and_redirects_under_ui_carry_them_too(client: TestClient) -> None:
    for path in ("/ui/", "/ui/static/app.css"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code in (200, 303, 307), path
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff", path


def test_each_header_is_sent_once(client: TestClient) -> None:
    r = client.get("/ui/login")
    names = [k.lower() for k, _ in r.headers.multi_items()]
    for name in ("content-security-policy", "x-content-type-options", "referrer-policy", "cache-control"):
        assert names.count(name) == 1


def test_the_machine_api_gets_no_page_headers(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert "content-security-policy" not in r.headers
