-- The grant script of ragobs.resilience.RedisRateLimiter: one atomic decision
-- per call, on Redis's own clock (TIME).
--
-- KEYS[1]: sorted set of grants, member "<cost>:<id>", score = grant time in
--          microseconds on Redis's clock. KEYS[2]: sum of the costs in KEYS[1].
-- ARGV: limit, window (microseconds), peek (1 = answer only), number of grants
--       to give back, those members, then (member, cost) pairs in line order.
-- Grants the longest prefix of the pairs that fits. Returns
-- {server time in microseconds, number granted, ms until the first refused one fits}.

local grants, sums = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local peek = ARGV[3] == '1'
local nvoid = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- Redis's wall clock may step back: never grant before the newest grant, so
-- the log stays ordered and every window is measured on one time line.
local newest = redis.call('ZRANGE', grants, -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) > now then now = tonumber(newest[2]) end
local function cost_of(member) return tonumber(string.match(member, '^(%d+):')) end

local used, recounted = 0, false
if redis.call('EXISTS', grants) == 1 then
  used = tonumber(redis.call('GET', sums))
  if used == nil then  -- the sum was lost (evicted, deleted): recount
    used = 0
    for _, m in ipairs(redis.call('ZRANGE', grants, 0, -1)) do used = used + cost_of(m) end
    recounted = true
  end
end
local changed = recounted
for i = 5, 4 + nvoid do
  if redis.call('ZREM', grants, ARGV[i]) == 1 then
    used = used - cost_of(ARGV[i])
    changed = true
  end
end
-- A grant at s counts while now < s + window.
local cutoff = string.format('%.0f', now - window)
local expired = redis.call('ZRANGEBYSCORE', grants, '-inf', cutoff)
if #expired > 0 then
  for _, m in ipairs(expired) do used = used - cost_of(m) end
  redis.call('ZREMRANGEBYSCORE', grants, '-inf', cutoff)
  changed = true
end
if used < 0 then used = 0 end

-- What this call takes is kept apart from ``used`` so that a peek (which
-- takes nothing) never inflates the stored sum.
local granted, wait, taken = 0, 0, 0
local i = 5 + nvoid
local stamp = string.format('%.0f', now)
while i < #ARGV do
  local cost = tonumber(ARGV[i + 1])
  -- A member already present was granted by an earlier run of this same call
  -- (the client retried after losing the reply): it is counted once.
  local held = (not peek) and redis.call('ZSCORE', grants, ARGV[i])
  if held then cost = 0 end
  if used + taken + cost > limit then
    -- Walk the oldest grants until enough of them would have expired.
    local excess = used + taken + cost - limit
    wait = window  -- only if the sum overstates the members: all expire by then
    local first = 0
    while excess > 0 do
      local chunk = redis.call('ZRANGE', grants, first, first + 99, 'WITHSCORES')
      if #chunk == 0 then break end
      for j = 1, #chunk, 2 do
        excess = excess - cost_of(chunk[j])
        if excess <= 0 then
          wait = tonumber(chunk[j + 1]) + window - now
          break
        end
      end
      first = first + 100
    end
    break
  end
  if not peek and not held then redis.call('ZADD', grants, stamp, ARGV[i]) end
  taken = taken + cost
  granted = granted + 1
  i = i + 2
end

if granted > 0 and not peek then
  used = used + taken
  local ttl = math.ceil(window / 1000)
  redis.call('SET', sums, used, 'PX', ttl)
  redis.call('PEXPIRE', grants, ttl)
elseif changed then
  -- Never a sum without the expiry of the grants it counts.
  local pttl = redis.call('PTTL', grants)
  if used > 0 and pttl > 0 then redis.call('SET', sums, used, 'PX', pttl)
  else redis.call('DEL', sums) end
end
return {now, granted, math.ceil(wait / 1000)}
