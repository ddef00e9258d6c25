"""Where the console's data comes from: the control API, called in a thread so that the
(asyncio) console never blocks on the socket. Anything with ``get`` and ``act`` like
``appliance.control.client.Client`` will do, which is how the snapshot tests feed fixed
data."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from appliance.control.client import ControlError


class Api(Protocol):
    def get(self, path: str, /, **query: Any) -> Any: ...

    def act(self, action: str, **args: Any) -> Any: ...


class Source:
    """Async calls on an ``Api``; remembers whether the daemon answered last time."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.connected = False
        self.error = ""

    async def get(self, path: str, /, **query: Any) -> Any | None:
        """The answer, or None while the daemon cannot be reached (``error`` says why);
        a refusal (4xx) raises ControlError."""
        try:
            out = await asyncio.to_thread(self.api.get, path, **query)
        except ControlError as e:
            if e.status != 0:
                raise
            self.connected, self.error = False, e.message
            return None
        self.connected, self.error = True, ""
        return out

    async def act(self, action: str, **args: Any) -> Any:
        """Do an action; raises ControlError with the daemon's message."""
        return await asyncio.to_thread(self.api.act, action, **args)
