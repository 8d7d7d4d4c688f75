"""``GET /openapi.json``: the router's own routes, their bodies as far as the router checks
them (the rest passes to vLLM untouched), and its errors. Built once, served as bytes."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from ctxroute.router.api.answers import JSON

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "bad request: invalid JSON, wrong types, over the context window",
        401: "missing or unknown API key",
        403: "a model the key may not use; admin without the admin key",
        404: "unknown model, route or backend",
        405: "a known route with another method",
        408: "the body did not arrive in time",
        413: "the body is over max_body_bytes",
        415: "an admin body that is not JSON",
        429: "rate limited, queue full or deadline (x-ctxroute-reject says which)",
        431: "the request's headers are too large",
        502: "the backend broke after its answer began",
        503: "no backend can take it, the router is overloaded, or it is shutting down",
        504: "every backend tried took the request and none answered in time",
    }
    return {str(c): {"description": words[c], "content": {JSON: {"schema": _ERROR}}} for c in codes}


_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string"},
        "content": {
            "oneOf": [
                {"type": "string"},
                {"type": "null"},
                {
                    "type": "array",
                    "items": {"type": "object", "properties": {"text": {"type": "string"}}},
                },
            ]
        },
    },
}

_COMMON = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "stream": {"type": "boolean"},
    "user": {"type": "string"},
    "priority": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
}

_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}

_COMPLETION_OUT = {
    "200": {
        "description": "vLLM's answer, passed on (a JSON body, or an SSE stream)",
        "content": {JSON: {"schema": {"type": "object"}}, "text/event-stream": {}},
    },
    **_errors(400, 401, 403, 404, 408, 413, 429, 431, 502, 503, 504),
}

_ROUTER_HEADERS = [
    {"name": "X-Session-ID", "in": "header", "schema": {"type": "string"}},
    {"name": "X-Priority", "in": "header", "schema": {"type": "string"}},
    {"name": "X-Request-Timeout", "in": "header", "schema": {"type": "string"}},
    {"name": "X-Request-ID", "in": "header", "schema": {"type": "string"}},
]


def _completion(summary: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}, {}],
            "parameters": _ROUTER_HEADERS,
            "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
            "responses": _COMPLETION_OUT,
        }
    }


def _get(summary: str, media: str, *errors: int) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "responses": {"200": {"description": "ok", "content": {media: {}}}, **_errors(*errors)},
        }
    }


def _admin(summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["backend"],
                            "properties": {"backend": {"type": "string"}},
                        }
                    }
                },
            },
            "responses": {
                "200": {"description": "the backend's state", "content": {JSON: {}}},
                **_errors(400, 401, 403, 404, 415),
            },
        }
    }


DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "ctxroute", "version": "0.1.0"},
    "paths": {
        "/v1/chat/completions": _completion(
            "a chat completion, routed by its context budget",
            {
                "type": "object",
                "required": ["messages"],
                "properties": {
                    **_COMMON,
                    "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                    "max_completion_tokens": {"type": "integer", "minimum": 1},
                },
            },
        ),
        "/v1/completions": _completion(
            "a completion, routed by its context budget",
            {
                "type": "object",
                "required": ["prompt"],
                "properties": {
                    **_COMMON,
                    "prompt": {
                        "oneOf": [
                            {"type": "string", "minLength": 1},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1},
                            _TOKEN_IDS,
                            {"type": "array", "items": _TOKEN_IDS, "minItems": 1},
                        ]
                    },
                },
            },
        ),
        "/v1/models": _get("the models the router serves", JSON),
        "/healthz": _get("the process is alive", "text/plain"),
        "/readyz": _get("every pool has a backend up", "text/plain", 503),
        "/status": _get("the router's state", JSON, 401, 403, 404),
        "/metrics": _get("Prometheus metrics", "text/plain", 401, 403, 404),
        "/dashboard": _get("the live status page", "text/html", 401, 403, 404),
        "/openapi.json": _get("this document", JSON),
        "/admin/drain": _admin("no new requests to a backend; in-flight ones finish"),
        "/admin/undrain": _admin("a drained backend takes requests again"),
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": "string", "nullable": True},
                            "code": {"type": "integer"},
                        },
                    }
                },
            }
        },
    },
}

_BODY = orjson.dumps(DOCUMENT)


async def openapi(request: web.Request, request_id: str) -> web.Response:
    return web.Response(body=_BODY, content_type=JSON)
