"""The service's endpoints, one module each, all on the shared connection runner.

`realtime_ws`: `/v1/realtime` (participants and viewers). `aai_ws`: `/v3/ws`, AssemblyAI's
streaming protocol. `http`: `/healthz`, `/readyz`, `/metrics`, `/v1/stt-token`. Each module's
`routes(server)` returns its aiohttp route definitions.
"""
