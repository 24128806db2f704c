"""`/openapi.json`, generated from the route table, validated as OpenAPI 3.1 by `openapi-spec-validator` (the
validator API tools and code generators rely on)."""

from __future__ import annotations

from openapi_spec_validator import validate


def test_openapi_document_validates_and_covers_the_pages(server):
    with server.client() as c:
        r = c.get("/openapi.json")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        document = r.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    for path in ("/", "/topics", "/status", "/announcements", "/changelog", "/openapi.json", "/metrics",
                 "/v1/topics/{topic}/events"):
        assert "get" in document["paths"][path], path
    publish = document["paths"]["/v1/topics/{topic}/events"]["post"]
    assert publish["security"] == [{"bearerAuth": []}]
    assert publish["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PublishRequest"}
    assert document["paths"]["/healthz"]["get"]["security"] == []
    problem = document["components"]["responses"]["Problem"]["content"]
    assert "application/problem+json" in problem
