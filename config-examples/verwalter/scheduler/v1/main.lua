-- Example scheduler: places role "web" on every live host and renders a lithos processes
-- file for it (templates/web/v1). verwalter calls main.scheduler(input) on the leader and
-- publishes the first result (the schedule) when its hash changes. See docs/verwalter.md.
--
-- Inputs used here:
--   input.parents  schedules in force (more than one right after a partition heals)
--   input.actions  {id = action} posted with POST /v1/action or /v1/wait_action
--   input.runtime  runtime/<role>/<version>/<name>.yaml, e.g. runtime.web.v2.release
--   input.peers    every host (self included) with its cantal state
--
-- State lives in the schedule itself ("vars"), read back from the parents: the Lua state
-- is fresh on every run.

local placement = require("placement")

local function sorted_keys(tbl)
  local keys = {}
  for key in pairs(tbl or {}) do
    keys[#keys + 1] = key
  end
  table.sort(keys)
  return keys
end

-- The state carried from run to run, merged over every parent. parents[1] is the leader's
-- own schedule: its settings win; counters take the largest value seen on any side.
local function previous_state(parents)
  local state = {counter = 0, max_parents_seen = #parents}
  for _, parent in ipairs(parents) do
    local vars = parent.vars or {}
    state.instances = state.instances or vars.instances
    state.version = state.version or vars.version
    state.counter = math.max(state.counter, vars.counter or 0)
    state.max_parents_seen = math.max(state.max_parents_seen, vars.max_parents_seen or 0)
  end
  state.instances = state.instances or 2
  return state
end

local function scheduler(input)
  local log = {}
  local state = previous_state(input.parents)
  local versions = sorted_keys(input.runtime.web)
  state.version = state.version or versions[#versions]
  local changes = {}
  local replies = {}

  -- Actions in id (time) order; each is seen exactly once.
  for _, id in ipairs(sorted_keys(input.actions)) do
    local action = input.actions[id]
    state.counter = state.counter + 1
    if action.button == "set_servers" then
      changes[#changes + 1] = string.format("web: instances %d -> %d", state.instances, action.n)
      state.instances = action.n
      replies[id] = {ok = true, instances = action.n}
    elseif action.button == "deploy" then
      if input.runtime.web[action.version] then
        changes[#changes + 1] = string.format("web: %s -> %s", state.version, action.version)
        state.version = action.version
        replies[id] = {ok = true, version = action.version}
      else
        replies[id] = {ok = false, error = "no runtime/web/" .. tostring(action.version)}
      end
    else
      log[#log + 1] = "ignored action " .. id
    end
  end

  local release = (input.runtime.web[state.version] or {}).release or {}
  local hosts = placement.live_hosts(input.peers)
  local nodes = {}
  for _, host in ipairs(hosts) do
    nodes[host] = {roles = {web = {instances = state.instances}}}
  end
  log[#log + 1] = string.format("web %s x%d on %s", state.version, state.instances, table.concat(hosts, ", "))

  local schedule = {
    vars = {
      cluster = "example",
      instances = state.instances,
      counter = state.counter,
      version = state.version,
      max_parents_seen = state.max_parents_seen,
    },
    roles = {
      web = {
        template = "web/v1",
        image = release.image or ("web." .. tostring(state.version)),
        buttons = {set_servers = {confirm = true}},
      },
    },
    nodes = nodes,
  }
  if #changes > 0 then
    schedule.changes = changes
  end
  return schedule, table.concat(log, "\n"), replies
end

return {scheduler = scheduler}
