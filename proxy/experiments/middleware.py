"""ABMiddleware: an `ab` route serves each call from the subject's variant (SPEC §9, issue 8).

The variant's chain (one `provider/model`, or the targets of the route it
names) is then tried in fallback order like any route; the response says which
variant served in `X-Sluice-Variant`, and the ledger records it.
"""

from __future__ import annotations

import dataclasses

from middleware.call import Call
from middleware.errors import SluiceError
from middleware.headers import SLUICE_SUBJECT, SLUICE_VARIANT, header
from middleware.types import ASGIApp, Message, Receive, Scope, Send
from proxy.experiments.assign import pick, subject_of


class ABMiddleware:
    """Narrows an `ab` route to the subject's variant; stamps `X-Sluice-Variant` on the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = Call.of(scope) if scope["type"] == "http" else None
        route = call.route if call is not None else None
        if call is None or route is None or route.strategy != "ab" or not route.variants:
            await self.app(scope, receive, send)
            return
        subject = subject_of(header(scope, SLUICE_SUBJECT), call.json(), call.tenant)
        variant = pick(route.name, subject, route.variants)
        call.route = dataclasses.replace(
            route, targets=variant.targets, strategy="fallback", variants=(), home=variant.targets[0].provider
        )
        call.target = variant.targets[0]
        stamp = (SLUICE_VARIANT, variant.name.encode())

        async def send_with_variant(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), stamp]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_variant)
        except SluiceError as exc:  # answered by the error boundary: it still says which variant failed
            exc.headers = [*exc.headers, stamp]
            raise
