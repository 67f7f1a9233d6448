-- Loaded with require("placement"): modules resolve only below scheduler/v1/.
local placement = {}

-- Short hostnames of the hosts cantal considers alive or suspect, sorted (self included).
function placement.live_hosts(peers)
  local hosts = {}
  for _, peer in pairs(peers) do
    if peer.state ~= "dead" and peer.hostname then
      hosts[#hosts + 1] = peer.hostname
    end
  end
  table.sort(hosts)
  return hosts
end

return placement
