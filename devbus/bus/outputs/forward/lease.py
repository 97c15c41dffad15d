"""A forward target's lease on a shared stream: the one bus that may send to it, and its proof.

The lease is a key, ``K:forward:<name>``, that expires unless its holder renews
it. Taking it increments an epoch (``K:forward:<name>:epoch``) in the same Lua
call, and the holder's token is ``"<epoch> <bus>"``: unique to one holding, and
growing from one holder to the next (a fencing token, sent to the target as
``X-Devbus-Epoch``). Everything the holder changes in Redis (where the target
stands, ``K:forward:<name>:cursor``) and every page it reads goes through a Lua
call that first checks the key still holds its token, so a bus that lost the
lease can neither move the cursor nor read on.

Between those calls the holder trusts a local deadline: the moment it sent its
last successful renewal, plus the lease's length, minus a margin. Redis starts
the expiry later than that moment, so the deadline passes first, and a holder
that was paused (SIGSTOP, a frozen VM, a starved loop) wakes past it and sends
nothing more. What the deadline cannot cover is a pause between the last check
and the bytes of one POST leaving: at most one request per target, which
arrives late beside the new holder's. The feed's order (see ``cluster``) makes
that request harmless to a receiver that drops repeated ``Idempotency-Key``s.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

__all__ = ["LEASE", "RENEW", "Lease", "LeaseLost"]

LEASE = 3.0  # seconds a lease lasts unless renewed
RENEW = 1.0  # seconds between renewals, and between tries of a bus waiting for the lease
# The local deadline ends this long before the lease's length: room for the monotonic clock
# of this machine to run a little slower than Redis's (clocks drift by parts per million).
MARGIN = 0.1

# Where a target's cursor starts, if it has none: the stream's newest entry (a cluster
# forwards what arrives after its first bus started), or, for a target that devbus 0.2 fed
# from a consumer group, the first entry that group had not acknowledged; the group goes.
# KEYS: cursor, stream. ARGV: group.
_START = """
local function start(cursor, stream, group)
  if redis.call('EXISTS', cursor) == 1 then return end
  local at = '0-0'
  local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if newest[1] then at = newest[1][1] end
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  for _, fields in ipairs(ok and groups or {}) do
    local info = {}
    for i = 1, #fields, 2 do info[fields[i]] = fields[i + 1] end
    if info['name'] == group then
      at = info['last-delivered-id']
      local pending = redis.call('XPENDING', stream, group)
      if pending[1] > 0 then
        local ms, seq = string.match(pending[2], '^(%d+)-(%d+)$')
        if seq == '0' then at = string.format('%.0f-18446744073709551615', tonumber(ms) - 1)
        else at = string.format('%s-%.0f', ms, tonumber(seq) - 1) end
      end
      redis.call('XGROUP', 'DESTROY', stream, group)
    end
  end
  redis.call('SET', cursor, at)
end
"""

# Take the lease if it is free (a new epoch), or keep it if it still holds ``previous``
# (this bus's own, after an error on its side); answer the token and the cursor, or nil.
# A missing epoch starts at Redis's clock in milliseconds, so that epochs keep growing
# even across a Redis that lost its data (a receiver may refuse a lower one).
# KEYS: lease, epoch, cursor, stream. ARGV: bus, lease ms, previous token or "", group.
_ACQUIRE = (
    _START
    + """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[3] then return false end
if current then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', KEYS[2], now[1] .. string.format('%03d', math.floor(now[2] / 1000)))
  end
  current = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[1]
  redis.call('SET', KEYS[1], current, 'PX', ARGV[2])
end
start(KEYS[3], KEYS[4], ARGV[4])
return {current, redis.call('GET', KEYS[3])}
"""
)

# The fenced calls: each checks the token first, renews the lease, then acts.
_FENCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
# KEYS: lease. ARGV: token, ms.
_RENEW = _FENCE + "return 1"
# The entries after ARGV[3] (at most ARGV[4]) and the stream's oldest entry.
# KEYS: lease, stream. ARGV: token, ms, after, count.
_READ = (
    _FENCE
    + """
local page = redis.call('XRANGE', KEYS[2], '(' .. ARGV[3], '+', 'COUNT', ARGV[4])
return {page, redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)}
"""
)
# KEYS: lease, cursor. ARGV: token, ms, the id the target stands at.
_COMMIT = _FENCE + "redis.call('SET', KEYS[2], ARGV[3]) return 1"
# KEYS: lease. ARGV: token.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class LeaseLost(Exception):
    """This bus can no longer prove that it holds the target's lease."""


class Lease:
    """One target's lease as one bus sees it: taken, proven, renewed and given back."""

    def __init__(self, redis: Redis, *, prefix: str, stream: str, holder: str, group: str) -> None:
        self.holder = holder
        self.token: str | None = None
        self._lease = prefix
        self._epoch = f"{prefix}:epoch"
        self._cursor = f"{prefix}:cursor"
        self._stream = stream
        self._group = group
        self._deadline = 0.0
        self._ms = int(LEASE * 1000)
        self._acquire = redis.register_script(_ACQUIRE)
        self._start = redis.register_script(_START + "start(KEYS[1], KEYS[2], ARGV[1])")
        self._renew = redis.register_script(_RENEW)
        self._read = redis.register_script(_READ)
        self._commit = redis.register_script(_COMMIT)
        self._release = redis.register_script(_RELEASE)

    @property
    def epoch(self) -> int:
        """The fencing token's number: greater for every later holder."""
        return int(self.token.split(" ", 1)[0]) if self.token else 0

    def valid(self) -> bool:
        """Whether this bus may still send: it holds the lease and its local deadline has not passed."""
        return self.token is not None and time.monotonic() < self._deadline

    async def start(self) -> None:
        """Give the target a cursor at the stream's end if it has none (when the first bus starts)."""
        await self._start(keys=[self._cursor, self._stream], args=[self._group])

    async def acquire(self) -> str | None:
        """Take the lease if it is free (or still this bus's); return the id the target stands at, else None."""
        sent = time.monotonic()
        reply = await self._acquire(
            keys=[self._lease, self._epoch, self._cursor, self._stream],
            args=[self.holder, self._ms, self.token or "", self._group],
        )
        if not reply:
            self.token = None
            return None
        token, cursor = (_text(part) for part in reply)
        if token != self.token:
            self.token, self._deadline = token, 0.0
        self._proven(sent)
        return cursor

    async def renew(self) -> None:
        """Prove and extend the lease; LeaseLost if another bus holds it."""
        await self._fenced(self._renew, [self._lease], [])

    async def read(self, after: str, count: int) -> tuple[list[Any], list[Any]]:
        """Under the lease: up to ``count`` raw entries after ``after``, and the stream's oldest entry."""
        page, oldest = await self._fenced(self._read, [self._lease, self._stream], [after, count])
        return page, oldest

    async def commit(self, entry_id: str) -> None:
        """Under the lease: record that the target stands at ``entry_id`` (every event up to it taken)."""
        await self._fenced(self._commit, [self._lease, self._cursor], [entry_id])

    async def release(self) -> None:
        """Give the lease back at once (rather than after it expires), if this bus still holds it."""
        token, self.token = self.token, None
        if token is not None:
            await self._release(keys=[self._lease], args=[token])

    async def _fenced(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self.token is None:
            raise LeaseLost
        sent = time.monotonic()
        reply = await script(keys=keys, args=[self.token, self._ms, *args])
        if not reply:
            self.token = None
            raise LeaseLost
        self._proven(sent)
        return reply

    def _proven(self, sent: float) -> None:
        # Redis set the expiry after ``sent``; calls that overlap each prove as much.
        self._deadline = max(self._deadline, sent + LEASE - MARGIN)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
