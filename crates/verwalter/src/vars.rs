//! Role variables: the four layers of a schedule merged for one role on one node.

use serde_json::{Map, Value};

/// The roles a node renders: the keys of `nodes.<node>.roles`, sorted.
pub fn node_roles(data: &Value, node: &str) -> Vec<String> {
    let mut roles: Vec<String> = data
        .pointer(&format!("/nodes/{}/roles", escape(node)))
        .and_then(Value::as_object)
        .map(|roles| roles.keys().cloned().collect())
        .unwrap_or_default();
    roles.sort();
    roles
}

/// Merges `vars`, `roles[role]`, `nodes[node].vars`, `nodes[node].roles[role]`, later
/// overriding earlier: top-level keys replace, and where both values are objects their keys
/// merge one level down (deeper values replace whole), as in the original.
pub fn role_vars(data: &Value, role: &str, node: &str) -> Map<String, Value> {
    let node_path = format!("/nodes/{}", escape(node));
    let layers = [
        data.pointer("/vars"),
        data.pointer(&format!("/roles/{}", escape(role))),
        data.pointer(&format!("{node_path}/vars")),
        data.pointer(&format!("{node_path}/roles/{}", escape(role))),
    ];
    let mut merged = Map::new();
    for layer in layers.into_iter().flatten().filter_map(Value::as_object) {
        merge_layer(&mut merged, layer);
    }
    merged
}

fn merge_layer(target: &mut Map<String, Value>, layer: &Map<String, Value>) {
    for (key, value) in layer {
        match (target.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(update)) => {
                for (inner_key, inner_value) in update {
                    existing.insert(inner_key.clone(), inner_value.clone());
                }
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

/// What the system adds to every role's vars besides the schedule.
#[derive(Debug, Clone, Default)]
pub struct Deployment {
    /// The schedule's timestamp (ms).
    pub timestamp: u64,
    pub deployment_id: String,
    /// `machine/*` of this host.
    pub machine: Map<String, Value>,
}

/// The merged vars plus `role`, `node`, `timestamp`, `deployment_id`, `verwalter_version`,
/// `full_schedule` and `machine`: exactly what the renderer gets.
pub fn system_vars(
    data: &Value,
    role: &str,
    node: &str,
    deployment: &Deployment,
) -> Map<String, Value> {
    let mut vars = role_vars(data, role, node);
    vars.insert("role".into(), Value::from(role));
    vars.insert("node".into(), Value::from(node));
    vars.insert("timestamp".into(), Value::from(deployment.timestamp));
    vars.insert(
        "deployment_id".into(),
        Value::from(deployment.deployment_id.as_str()),
    );
    vars.insert("verwalter_version".into(), Value::from(crate::VERSION));
    vars.insert("full_schedule".into(), data.clone());
    vars.insert("machine".into(), Value::Object(deployment.machine.clone()));
    vars
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn layers_merge_in_order_one_level_deep() {
        let data = json!({
            "vars": {"cluster": "prod", "limits": {"cpu": 1, "mem": 1}, "deep": {"a": {"x": 1}}},
            "roles": {"web": {"template": "web/v1", "limits": {"cpu": 2}}},
            "nodes": {"a": {
                "vars": {"dc": "x", "deep": {"a": {"y": 2}}},
                "roles": {"web": {"instances": 2, "limits": {"mem": 3}}, "db": {}}
            }}
        });
        let vars = role_vars(&data, "web", "a");
        assert_eq!(
            Value::Object(vars),
            json!({
                "cluster": "prod", "dc": "x", "template": "web/v1", "instances": 2,
                "limits": {"cpu": 2, "mem": 3},
                // one level down only: the inner object is replaced whole
                "deep": {"a": {"y": 2}}
            })
        );
        assert_eq!(node_roles(&data, "a"), ["db", "web"]);
        assert!(node_roles(&data, "b").is_empty());
    }

    #[test]
    fn scalar_replaces_object_and_back() {
        let data = json!({
            "vars": {"x": {"a": 1}},
            "nodes": {"n": {"vars": {"x": 5}, "roles": {"r": {"x": {"b": 2}}}}}
        });
        assert_eq!(role_vars(&data, "r", "n")["x"], json!({"b": 2}));
    }
}
