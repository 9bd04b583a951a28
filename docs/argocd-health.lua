-- Argo CD health check for capstan.dev PostgresCluster.
--
-- Install it in argocd-cm:
--
--   data:
--     resource.customizations.health.capstan.dev_PostgresCluster: |
--       <this file>
--
-- Argo CD runs it with the object as the global `obj` and reads the table it
-- returns: `status` (Healthy, Progressing, Degraded, Suspended, Missing) and
-- `message`. It follows Capstan's kstatus conditions, in this order:
--
--   1. no status yet                                    -> Progressing
--   2. status.observedGeneration behind metadata.generation
--      (the status, Stalled included, describes an older spec)
--                                                       -> Progressing
--   3. Stalled True (the spec cannot be applied)        -> Degraded
--   4. Reconciling True (an operation or rollout runs)  -> Progressing
--   5. Degraded True (something stopped working)        -> Degraded
--   6. Ready True                                       -> Healthy
--   7. anything else                                    -> Progressing
--
-- Written for Lua 5.1 (Argo CD's gopher-lua) and tested with Lua 5.4 by
-- e2e/src/argocd.rs.

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local hs = {}
local status = obj.status
if status == nil or (status.conditions == nil and status.observedGeneration == nil) then
  hs.status = "Progressing"
  hs.message = "waiting for status"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration
if generation ~= nil and observed ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation) ..
    " (status describes " .. tostring(observed) .. ")"
  return hs
end

local stalled = condition(status, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end

local reconciling = condition(status, "Reconciling")
if is_true(reconciling) then
  hs.status = "Progressing"
  hs.message = text(reconciling, "Reconciling")
  return hs
end

local degraded = condition(status, "Degraded")
if is_true(degraded) then
  hs.status = "Degraded"
  hs.message = text(degraded, "Degraded")
  return hs
end

local ready = condition(status, "Ready")
if is_true(ready) then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "waiting for status")
return hs
