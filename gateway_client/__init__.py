"""Async client for AssemblyAI's LLM Gateway and any OpenAI-compatible chat-completions API.

```python
from gateway_client import GatewayClient

async with GatewayClient() as gw:
    result = await gw.complete({"model": "gpt-4.1", "messages": [...]})
    async with gw.stream({"model": "gpt-4.1", "messages": [...]}) as stream:
        async for chunk in stream:
            print(chunk.choices[0].delta.content or "", end="")
    print(stream.result().usage)
```

Pure cores: :mod:`gateway_client.sse` (SSE decoder), :mod:`gateway_client.assemble`
(chunk assembler), :mod:`gateway_client.retry` (retry policy), :mod:`gateway_client.errors`
(error family and body parsing). The aiohttp adapter is :mod:`gateway_client.client`
(transport in :mod:`gateway_client._transport`, the stream in :mod:`gateway_client._stream`).
"""

from gateway_client.assemble import (
    AssembledChoice,
    ChunkAssembler,
    StreamResult,
    ToolCall,
    ToolFunction,
)
from gateway_client.client import REGION_URLS, ChatStream, GatewayClient, Timeouts
from gateway_client.errors import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    FirstTokenTimeout,
    GatewayError,
    GatewayTimeout,
    HTTPStatusError,
    IdleTimeout,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    RunFailedError,
    ServerError,
    StreamError,
    TotalTimeout,
    TransportError,
)
from gateway_client.models import ChatChunk, ChatCompletion, ChatRequest, Usage
from gateway_client.retry import RetryPolicy
from gateway_client.sse import Event, SSEDecoder

__all__ = [
    "REGION_URLS",
    "AssembledChoice",
    "AuthenticationError",
    "BadRequestError",
    "ChatChunk",
    "ChatCompletion",
    "ChatRequest",
    "ChatStream",
    "ChunkAssembler",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "Event",
    "FirstTokenTimeout",
    "GatewayClient",
    "GatewayError",
    "GatewayTimeout",
    "HTTPStatusError",
    "IdleTimeout",
    "InvalidRequestError",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "RetryPolicy",
    "RunFailedError",
    "SSEDecoder",
    "ServerError",
    "StreamError",
    "StreamResult",
    "Timeouts",
    "ToolCall",
    "ToolFunction",
    "TotalTimeout",
    "TransportError",
    "Usage",
]
