"""An aiohttp upstream for tests/paths.rs: answers which of its routes served the request."""
import sys

from aiohttp import web


async def admin(request):
    return web.Response(text="route=admin\n")


async def open_(request):
    return web.Response(text="route=open\n")


app = web.Application()
app.router.add_route("*", "/admin", admin)
app.router.add_route("*", "/admin/{tail:.*}", admin)
app.router.add_route("*", "/{tail:.*}", open_)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
