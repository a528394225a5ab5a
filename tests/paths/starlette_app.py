"""A Starlette app on uvicorn, upstream for tests/paths.rs: answers which of its routes served
the request."""
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


async def admin(request):
    return PlainTextResponse("route=admin\n")


async def open_(request):
    return PlainTextResponse("route=open\n")


app = Starlette(
    routes=[
        Route("/admin", admin, methods=METHODS),
        Route("/admin/{rest:path}", admin, methods=METHODS),
        Route("/{rest:path}", open_, methods=METHODS),
    ]
)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False)
