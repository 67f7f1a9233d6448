-- Benchmark scheduler for O3 (docs/benchmarks.md): places every instance that
-- runtime.<service>.<version>.release asks for on the live peers, one at a time, on the host
-- with the most free capacity, with a penalty for instances of the same service already
-- there (spreading). Capacity comes from each peer's machine metadata (`machine.capacity`).
-- tests/bench/verwalter-bench/gen-input.py writes an input with 20 services x 50 instances
-- and 100 hosts.

local function sorted_keys(tbl)
  local keys = {}
  for key in pairs(tbl or {}) do
    keys[#keys + 1] = key
  end
  table.sort(keys)
  return keys
end

local function hosts_of(peers)
  local hosts = {}
  for _, id in ipairs(sorted_keys(peers)) do
    local peer = peers[id]
    if peer.state ~= "dead" then
      local capacity = (peer.machine or {}).capacity or {cpu = 1, memory = 1024}
      hosts[#hosts + 1] = {
        name = peer.hostname,
        cpu = capacity.cpu,
        memory = capacity.memory,
        free_cpu = capacity.cpu,
        free_memory = capacity.memory,
        count = {},
      }
    end
  end
  return hosts
end

-- The best host for one instance, or nil when none has room.
local function best_host(hosts, service, need)
  local best, best_score = nil, nil
  for i = 1, #hosts do
    local host = hosts[i]
    if host.free_cpu >= need.cpu and host.free_memory >= need.memory then
      local score = host.free_cpu / host.cpu + host.free_memory / host.memory
        - 0.5 * (host.count[service] or 0)
      if best_score == nil or score > best_score then
        best, best_score = host, score
      end
    end
  end
  return best
end

local function scheduler(input)
  local hosts = hosts_of(input.peers)
  local roles, nodes = {}, {}
  local placed, unplaced = 0, 0
  for _, service in ipairs(sorted_keys(input.runtime)) do
    local versions = sorted_keys(input.runtime[service])
    local version = versions[#versions]
    local release = input.runtime[service][version].release
    local need = {cpu = release.cpu, memory = release.memory}
    roles[service] = {template = service .. "/" .. version, version = version}
    for _ = 1, release.instances do
      local host = best_host(hosts, service, need)
      if host == nil then
        unplaced = unplaced + 1
      else
        host.free_cpu = host.free_cpu - need.cpu
        host.free_memory = host.free_memory - need.memory
        host.count[service] = (host.count[service] or 0) + 1
        placed = placed + 1
      end
    end
  end
  for _, host in ipairs(hosts) do
    local host_roles = {}
    for service, count in pairs(host.count) do
      host_roles[service] = {instances = count}
    end
    nodes[host.name] = {roles = host_roles}
  end
  return {
    vars = {placed = placed, unplaced = unplaced},
    roles = roles,
    nodes = nodes,
  }, string.format("placed %d instances (%d unplaced) on %d hosts", placed, unplaced, #hosts)
end

return {scheduler = scheduler}
