"""The pure core of a session: no asyncio, no aiohttp, no I/O; mypy --strict.

Everything here takes plain calls and returns values or decisions; the adapters above
(`realtime.session`, `realtime.connection`, `realtime.endpoints`) carry them out.
"""
