"""Cluster mode (`--redis-url`): what several service nodes share through Redis.

Optional: without a Redis URL nothing here is imported and no Redis is needed.

- `rates`: the per-model rate windows, kept in Redis so N nodes together stay within the
  gateway's per-model limit (`Limiter(shared=...)`).
"""
