"""The Redis store's append: one Lua call that stores a batch of appends, idempotently.

One call holds every append a bus joined (each with its claim) and, in one
atomic step, for each append:

- a ``key`` used within the window: stores nothing, answers the ids the key's
  first append got (or that the key came with another fingerprint);
- a ``producer``: stores only the drafts whose seq is above the producer's last,
  and moves the last seq on;
- then the entries, contiguous in the stream: the first with an id Redis makes
  (``*``), the next ones with the ids that follow it (``ms-(n+1)``, …), so that a
  call's ids are known from its first id and its count.

The call also records its own ``token`` and answer under the bus's name: a bus
that lost its connection after sending a call sends the same call again, and
gets the first answer instead of storing twice. A bus has one call in flight
at a time, so its last answer is the only one it can ask again. (A call held
by Redis unread for longer than the bus's socket timeout, then run after the
call that asked again and after the next one, would still store twice: Redis
would have to sit on a received command for over ten seconds.)

Keys under ``--store-key`` K: ``K:producers`` (producer → last seq) and
``K:producers:seen`` (a sorted set by last use, bounding them by count);
``K:keys`` (key → ``created fingerprint first-id count``) and ``K:keys:seen``
(bounding them by age and count); ``K:calls`` (bus → ``token`` and answer) and
``K:calls:seen`` (forgetting buses gone for a day).
"""

from __future__ import annotations

from collections.abc import Sequence

from devbus.bus.store.base import KEY_WINDOW, MAX_KEYS, MAX_PRODUCERS, Claim
from devbus.bus.store.redis_link import StreamId, format_stream_id, parse_stream_id

__all__ = ["APPEND_SCRIPT", "Outcome", "append_argument", "parse_answer", "script_args", "script_keys"]

CALLS_KEPT_MS = 24 * 3600 * 1000  # a bus's last answer outlives the bus by a day
MAX_CALLS = 1000  # buses whose last answer is kept

# KEYS: see script_keys. ARGV: the length to trim the stream to, now (ms), the call's
# token, the bus's name, the key window (ms), the bounds of keys, producers and calls,
# how long calls are kept (ms), then the batch (see append_argument). Returns the
# answer: the first id stored (or -), then one code per append: s<skipped> (stored
# all but that many leading drafts), r<first-id>:<count> (a key used before: its
# first append's ids), c (a key used before with another fingerprint).
APPEND_SCRIPT = """
local stream, producers, producers_seen, keys, keys_seen, calls, calls_seen = unpack(KEYS)
local now, token, bus = ARGV[2], ARGV[3], ARGV[4]
local window, max_keys, max_producers, max_calls = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local newline = string.char(10)
local answered = redis.call('HGET', calls, bus)
if answered and string.sub(answered, 1, #token + 1) == token .. newline then
  return string.sub(answered, #token + 2)
end
local batch, at, codes, first, ms, n = ARGV[10], 1, {}, '-', nil, 0
local function line()
  local stop = string.find(batch, newline, at, true)
  local text = string.sub(batch, at, stop - 1)
  at = stop + 1
  return text
end
local function add(t, j)
  if ms == nil then
    first = redis.call('XADD', stream, '*', 't', t, 'j', j)
    local dash = string.find(first, '-', 1, true)
    ms, n = string.sub(first, 1, dash - 1), tonumber(string.sub(first, dash + 1))
  else
    n = n + 1
    redis.call('XADD', stream, ms .. '-' .. n, 't', t, 'j', j)
  end
  return ms .. '-' .. n
end
local function trim(hash, seen, bound, horizon)
  if horizon then
    local old = redis.call('ZRANGEBYSCORE', seen, '-inf', '(' .. horizon, 'LIMIT', 0, 100)
    if #old > 0 then
      redis.call('HDEL', hash, unpack(old))
      redis.call('ZREM', seen, unpack(old))
    end
  end
  local excess = redis.call('ZCARD', seen) - tonumber(bound)
  if excess > 0 then
    local gone = redis.call('ZPOPMIN', seen, excess)
    for i = 1, #gone, 2 do redis.call('HDEL', hash, gone[i]) end
  end
end
while at <= #batch do
  local count, producer, key, fingerprint = string.match(line(), '^(%d+) (%S+) (%S+) (%S+)$')
  local code = nil
  if key ~= '-' then
    local used = redis.call('HGET', keys, key)
    if used then
      local created, fp, origin, size = string.match(used, '^(%d+) (%S+) (%S+) (%d+)$')
      if tonumber(created) > tonumber(now) - window then
        code = fp == fingerprint and ('r' .. origin .. ':' .. size) or 'c'
      end
    end
  end
  local last = 0
  if producer ~= '-' then last = tonumber(redis.call('HGET', producers, producer) or '0') end
  local skipped, stored, top, start = 0, 0, last, '-'
  for _ = 1, tonumber(count) do
    local head, j = line(), line()
    if code == nil then
      local t, seq = head, nil
      if producer ~= '-' then
        local space = string.find(head, ' ', 1, true)
        t, seq = string.sub(head, 1, space - 1), tonumber(string.sub(head, space + 1))
      end
      if seq ~= nil and seq <= last then
        skipped = skipped + 1
      else
        local id = add(t, j)
        if stored == 0 then start = id end
        stored = stored + 1
        if seq ~= nil and seq > top then top = seq end
      end
    end
  end
  if code == nil then
    code = 's' .. skipped
    if producer ~= '-' and stored > 0 then
      redis.call('HSET', producers, producer, top)
      redis.call('ZADD', producers_seen, now, producer)
    end
    if key ~= '-' then
      redis.call('HSET', keys, key, now .. ' ' .. fingerprint .. ' ' .. start .. ' ' .. stored)
      redis.call('ZADD', keys_seen, now, key)
    end
  end
  codes[#codes + 1] = code
end
redis.call('XTRIM', stream, 'MAXLEN', '=', ARGV[1])
trim(producers, producers_seen, max_producers, nil)
trim(keys, keys_seen, max_keys, tonumber(now) - window)
trim(calls, calls_seen, max_calls, tonumber(now) - tonumber(ARGV[9]))
local answer = first .. ' ' .. table.concat(codes, ' ')
redis.call('HSET', calls, bus, token .. newline .. answer)
redis.call('ZADD', calls_seen, now, bus)
return answer
"""


_KEYS = ("events", "producers", "producers:seen", "keys", "keys:seen", "calls", "calls:seen")


def script_keys(key: str) -> list[str]:
    """The keys APPEND_SCRIPT touches under ``--store-key`` ``key``, in its order."""
    return [f"{key}:{name}" for name in _KEYS]


def script_args(*, history: int, now_ms: int, token: str, bus: str, batch: bytes) -> list[bytes | str | int]:
    """APPEND_SCRIPT's arguments, the bounds included."""
    window = int(KEY_WINDOW * 1000)
    return [history, now_ms, token, bus, window, MAX_KEYS, MAX_PRODUCERS, MAX_CALLS, CALLS_KEPT_MS, batch]


def append_argument(appends: Sequence[tuple[Claim | None, Sequence[bytes], Sequence[bytes]]]) -> bytes:
    """The (claim, types, tails) of every append as APPEND_SCRIPT's one batch argument.

    One argument instead of several per event: redis-py packs each argument in Python,
    and at a few hundred events per call that cost more than Redis spends on the XADDs.
    An append is a header line (count, producer, key, fingerprint in hex; ``-`` for none),
    then a type line (followed by `` <seq>`` for a producer's) and a JSON line per entry.
    None of them can hold a newline or a space where it would be misread: types have no
    whitespace, compact JSON escapes it, keys and producer ids are visible ASCII.
    """
    lines: list[bytes] = []
    for claim, types, tails in appends:
        producer = claim.producer if claim is not None else None
        key = claim.key if claim is not None else None
        fingerprint = claim.fingerprint.hex() if claim is not None and claim.fingerprint else "-"
        lines.append(f"{len(tails)} {producer or '-'} {key or '-'} {fingerprint}".encode())
        if producer is not None:
            assert claim is not None
            for event_type, seq, tail in zip(types, claim.seqs, tails, strict=True):
                lines += (b"%b %d" % (event_type, seq), tail)
        else:
            for pair in zip(types, tails, strict=True):
                lines.extend(pair)
    lines.append(b"")
    return b"\n".join(lines)


class Outcome:
    """What the call did for one append: the ids it stored, the drafts it skipped, a key's first ids."""

    __slots__ = ("conflict", "ids", "replayed", "skipped")

    def __init__(self, ids: list[bytes], *, skipped: int = 0, replayed: list[str] | None = None) -> None:
        self.ids = ids
        self.skipped = skipped
        self.replayed = replayed
        self.conflict = False


def _run_of(first: StreamId, count: int) -> list[str]:
    ms, n = first
    return [format_stream_id((ms, n + i)) for i in range(count)]


def parse_answer(answer: bytes | str, sizes: Sequence[int]) -> list[Outcome]:
    """Read APPEND_SCRIPT's answer for appends of ``sizes`` drafts each."""
    text = answer.decode() if isinstance(answer, bytes) else answer
    first, *codes = text.split(" ")
    at = parse_stream_id(first) or (0, 0)
    outcomes = []
    for size, code in zip(sizes, codes, strict=True):
        if code == "c":
            outcome = Outcome([])
            outcome.conflict = True
        elif code[0] == "r":
            start, _, count = code[1:].rpartition(":")
            origin = parse_stream_id(start)
            outcome = Outcome([], replayed=_run_of(origin, int(count)) if origin is not None else [])
        else:
            skipped = int(code[1:])
            ids = [entry_id.encode() for entry_id in _run_of(at, size - skipped)]
            at = (at[0], at[1] + size - skipped)
            outcome = Outcome(ids, skipped=skipped)
        outcomes.append(outcome)
    return outcomes
