"""A Starlette router that finds a request's route by its exact path.

Starlette's :class:`~starlette.routing.Router` tries every route's regular expression in turn; with every
service mounted that is some fifty attempts per request, a visible share of a homeserver's CPU per message.
Our paths carry no parameters (``POST /<service>/v1/<operation>``), so a dict from path to its routes
finds the candidates at once. Anything the index does not settle (a method that is not allowed, an unknown
path, a parameterised route) falls through to Starlette's own loop, so 404/405 and slash redirects stay
exactly Starlette's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match, Route, Router, WebSocketRoute
from starlette.types import Receive, Scope, Send

__all__ = ["PathIndexedRouter"]


class PathIndexedRouter(Router):
    def __init__(self, routes: Sequence[BaseRoute], **kwargs: Any) -> None:
        super().__init__(list(routes), **kwargs)
        index: dict[str, list[BaseRoute]] = {}
        for route in self.routes:
            if isinstance(route, Route | WebSocketRoute) and not route.param_convertors:
                index.setdefault(route.path, []).append(route)
        self._index = index

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            for route in self._index.get(_route_path(scope), ()):
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    scope.setdefault("router", self)
                    scope["route"] = route
                    scope.update(child_scope)
                    await route.handle(scope, receive, send)
                    return
        await super().app(scope, receive, send)


def _route_path(scope: Scope) -> str:
    # The path below the app's mount point, as Starlette's routes match it.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
