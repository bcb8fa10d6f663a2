from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _close_sdk_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every openai/anthropic SDK client a test made, when it ends.

    Tests make clients inline (`openai.OpenAI(...).chat...`); left to the garbage
    collector, their pooled sockets raise ResourceWarning inside some later test,
    which `filterwarnings = error` turns into that test's failure.
    """
    made: list[Any] = []
    for cls in (openai.OpenAI, anthropic.Anthropic):
        original = cls.__init__

        def tracking_init(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> None:
            __original(self, *args, **kwargs)
            made.append(self)

        monkeypatch.setattr(cls, "__init__", tracking_init)
    yield
    for client in made:
        client.close()
