"""Sluice's reusable pure-ASGI middlewares; each works in any Starlette/FastAPI app."""

from middleware.auth import AuthMiddleware, AuthOptions
from middleware.boundary import ErrorMiddleware
from middleware.call import CALL_KEY, Call, Route, Target

__all__ = ["CALL_KEY", "AuthMiddleware", "AuthOptions", "Call", "ErrorMiddleware", "Route", "Target"]
