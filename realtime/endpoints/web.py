"""`GET /` and the static files of the browser page (realtime/web/)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from realtime.server import Server


def routes(server: Server) -> list[web.RouteDef]:
    return []
