-- The demo stack's scheduler: places role "demo" (the demo-web service, image demo.<version>)
-- on every host cantal does not report dead, and renders it through templates/demo/v1.
-- verwalter calls scheduler(input) on the leader; see docs/verwalter.md for the contract.
--
-- State (version, instances per host, port) lives in the schedule's vars and is read back
-- from input.parents: the Lua state is fresh on every run.
--
-- Actions (POST /v1/action or /v1/wait_action, answered for wait_action):
--   {"button": "set_version", "version": "v2"}   deploy another release (runtime/demo/<v>)
--   {"button": "scale", "instances": 2}           instances of demo-web per host (0..=8)

local DEFAULT_PORT = 8080
local MAX_INSTANCES = 8

local function sorted_keys(tbl)
  local keys = {}
  for key in pairs(tbl or {}) do
    keys[#keys + 1] = key
  end
  table.sort(keys)
  return keys
end

-- parents[1] is the leader's own schedule: its settings win over the other parents'.
local function previous_state(parents)
  local state = {}
  for _, parent in ipairs(parents) do
    local vars = parent.vars or {}
    state.version = state.version or vars.version
    state.instances = state.instances or vars.instances
    state.port = state.port or vars.port
  end
  return state
end

-- Host names of every peer not reported dead, sorted (the leader is among the peers).
local function live_hosts(peers)
  local hosts = {}
  for _, id in ipairs(sorted_keys(peers)) do
    local peer = peers[id]
    if peer.state ~= "dead" and peer.hostname then
      hosts[#hosts + 1] = peer.hostname
    end
  end
  return hosts
end

local function scheduler(input)
  local log = {}
  local releases = input.runtime.demo or {}
  local versions = sorted_keys(releases)
  local state = previous_state(input.parents)
  -- A new cluster starts with the oldest release, so that rolling out a newer one is an action.
  state.version = state.version or versions[1]
  state.instances = state.instances or 1
  state.port = state.port or DEFAULT_PORT
  local changes = {}
  local replies = {}

  for _, id in ipairs(sorted_keys(input.actions)) do
    local action = input.actions[id]
    if action.button == "set_version" then
      if releases[action.version] then
        changes[#changes + 1] = string.format("demo: version %s -> %s", state.version, action.version)
        state.version = action.version
        replies[id] = {ok = true, version = action.version}
      else
        replies[id] = {ok = false, error = "no runtime/demo/" .. tostring(action.version)}
      end
    elseif action.button == "scale" then
      local n = math.tointeger(action.instances)
      if n and n >= 0 and n <= MAX_INSTANCES then
        changes[#changes + 1] = string.format("demo: instances %d -> %d", state.instances, n)
        state.instances = n
        replies[id] = {ok = true, instances = n}
      else
        replies[id] = {ok = false, error = "instances must be an integer 0.." .. MAX_INSTANCES}
      end
    else
      replies[id] = {ok = false, error = "unknown button " .. tostring(action.button)}
      log[#log + 1] = "ignored action " .. id
    end
  end

  local release = (releases[state.version] or {}).release or {}
  local hosts = live_hosts(input.peers)
  local nodes = {}
  for _, host in ipairs(hosts) do
    nodes[host] = {roles = {demo = {}}}
  end
  log[#log + 1] = string.format("demo %s x%d on %s", tostring(state.version), state.instances,
    table.concat(hosts, ", "))

  local schedule = {
    vars = {version = state.version, instances = state.instances, port = state.port},
    roles = {
      demo = {
        template = "demo/v1",
        image = release.image or ("demo." .. tostring(state.version)),
        -- The web UI offers these buttons on the role.
        buttons = {set_version = {versions = versions}, scale = {max = MAX_INSTANCES}},
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
