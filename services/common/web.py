"""HTTP entrypoints whose secret path segments never reach the access log.

nameko's web server (eventlet.wsgi) logs every request line at INFO. A route that declares
a segment `<secret:name>` (a token that is a password, such as a calendar feed link) is
logged as its pattern instead, `GET /calendar/<secret:token>.ics HTTP/1.1`, so neither the
secret nor a query string reaches a log. Every `@http` of a service must come from here:
the service has one web server, and nameko picks it by the entrypoint's `server`.
"""
from __future__ import annotations

from typing import Any

from nameko.web.handlers import HttpRequestHandler
from nameko.web.server import HttpOnlyProtocol, WebServer
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, UnicodeConverter

CONVERTER = "secret"  # the route converter name: `<secret:token>`


class SecretConverter(UnicodeConverter):
    """Matches like `string`; marks the segment as one the access log must not show."""


class _RedactingProtocol(HttpOnlyProtocol):
    def handle_one_response(self) -> None:
        # Before eventlet handles the request: every line it logs reads requestline.
        pattern = self.server.app.secret_pattern(self.environ)
        if pattern is not None:
            self.requestline = (f"{self.environ['REQUEST_METHOD']} {pattern} "
                                f"{self.environ['SERVER_PROTOCOL']}")
        super().handle_one_response()


class SecretAwareWebServer(WebServer):
    def make_url_map(self) -> Map:
        # nameko's map, with the converter: rules compile as they are added
        url_map = Map(converters={CONVERTER: SecretConverter})
        for provider in self._providers:
            rule = provider.get_url_rule()
            rule.endpoint = provider
            url_map.add(rule)
        return url_map

    def get_wsgi_app(self) -> Any:
        app = super().get_wsgi_app()
        app.secret_pattern = lambda environ: _secret_pattern(app.url_map, environ)
        return app

    def get_wsgi_server(self, sock: Any, wsgi_app: Any, protocol: Any = _RedactingProtocol,
                        debug: bool = False) -> Any:
        return super().get_wsgi_server(sock, wsgi_app, protocol=protocol, debug=debug)


def _secret_pattern(url_map: Map, environ: dict[str, Any]) -> str | None:
    """The route pattern when the request's route has a secret segment, else None."""
    adapter = url_map.bind_to_environ(environ)
    try:
        rule, _ = adapter.match(return_rule=True)
    except MethodNotAllowed as refused:  # a secret sent with the wrong method is still one
        rule, _ = adapter.match(return_rule=True, method=(refused.valid_methods or ["GET"])[0])
    except HTTPException:  # no route: nameko answers 404 and logs the path as sent
        return None
    return rule.rule if f"<{CONVERTER}:" in rule.rule else None


class SecretAwareHttp(HttpRequestHandler):
    server = SecretAwareWebServer()


http = SecretAwareHttp.decorator
