"""The OpenAPI document of the HTTP API, as the service serves it at /openapi.json.

docs/openapi.json holds a copy (a test compares); refresh it after changing a route:
`python -m services.runtime.openapi > docs/openapi.json`.
"""

import asyncio
import sys
from typing import Any

import orjson
from pydantic import SecretStr

from services.http.app import create_app
from services.runtime.bootstrap import bootstrap
from services.settings import Settings


async def build_openapi() -> dict[str, Any]:
    """The document, from an app wired to placeholder addresses (nothing connects)."""
    settings = Settings(
        kafka_bootstrap="localhost:9092",
        database_url=SecretStr("postgresql+asyncpg://localhost/leadscore"),
    )
    container = bootstrap(settings)
    try:
        return create_app(container).openapi()
    finally:
        await container.close()


def render(document: dict[str, Any]) -> str:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(asyncio.run(build_openapi())))
