//! The Lua scheduler: `main.scheduler(input)` in a fresh, sandboxed Lua 5.4 state per run.
//!
//! Sandbox: `base` (no `dofile`, `loadfile`, binary chunks, `collectgarbage` beyond `count`),
//! `table`, `string`, `utf8`, `math` (seeded from the input), `debug.traceback`; `require`
//! resolves only below `scheduler/v1/`. Limits: an instruction budget checked every 10 000
//! instructions, a memory limit and a wall-clock limit.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::{
    HookTriggers, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Table, Value as LuaValue,
    VmState,
};
use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::schedule::canonical_json;

/// How often the hook runs, in VM instructions.
const HOOK_INTERVAL: u32 = 10_000;

/// Resource limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub instructions: u64,
    pub memory: usize,
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            instructions: 2_000_000_000,
            memory: 256 << 20,
            timeout: Duration::from_secs(5),
        }
    }
}

/// What a run cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub duration: Duration,
    /// Instructions executed, in steps of the hook interval.
    pub instructions: u64,
    /// Bytes the state used at the end.
    pub memory: usize,
}

/// Why a run produced no schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{0}")]
    Load(String),
    #[error("main.lua must return a table with a `scheduler` function, got {0}")]
    NoSchedulerFunction(String),
    #[error("{0}")]
    Runtime(String),
    #[error("scheduler returned {0}, expected object")]
    NotObject(String),
    #[error("scheduler returned invalid JSON: {0}")]
    BadJson(String),
    #[error("scheduler result: {0}")]
    BadResult(String),
    #[error("instruction limit ({0}) exceeded")]
    InstructionLimit(u64),
    #[error("memory limit ({0} bytes) exceeded")]
    MemoryLimit(usize),
    #[error("timeout ({0:?}) exceeded")]
    Timeout(Duration),
}

/// A successful run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The schedule data (always an object).
    pub data: Value,
    pub debug_log: String,
    /// Replies to `wait_action` calls, by action id.
    pub replies: BTreeMap<String, Value>,
    pub stats: Stats,
}

/// A failed run, with what the script logged before it failed.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: SchedulerError,
    pub debug_log: String,
    pub stats: Stats,
}

/// Which limit stopped the script, recorded by the hook.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Instructions,
    Timeout,
}

/// Runs `main.scheduler(input)` from `dir` (the `scheduler/v1` directory).
pub fn run(dir: &Path, input: &Value, limits: &Limits) -> Result<Outcome, Failure> {
    let started = Instant::now();
    let log = Rc::new(RefCell::new(String::new()));
    let executed = Rc::new(Cell::new(0_u64));
    let stop = Rc::new(Cell::new(None));
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::UTF8 | StdLib::MATH,
        LuaOptions::new(),
    );
    let result = lua
        .map_err(|err| SchedulerError::Load(err.to_string()))
        .and_then(|lua| {
            let outcome = execute(&lua, dir, input, limits, &log, &executed, &stop, started);
            let memory = lua.used_memory();
            outcome
                .map(|outcome| (outcome, memory))
                .map_err(|err| match err {
                    _ if matches!(stop.get(), Some(Stop::Instructions)) => {
                        SchedulerError::InstructionLimit(limits.instructions)
                    }
                    _ if matches!(stop.get(), Some(Stop::Timeout)) => {
                        SchedulerError::Timeout(limits.timeout)
                    }
                    other => other,
                })
        });
    let stats = |memory| Stats {
        duration: started.elapsed(),
        instructions: executed.get(),
        memory,
    };
    let debug_log = log.borrow().clone();
    match result {
        Ok(((data, script_log, replies), memory)) => Ok(Outcome {
            data,
            debug_log: debug_log + &script_log,
            replies,
            stats: stats(memory),
        }),
        Err(error) => Err(Failure {
            error,
            debug_log,
            stats: stats(0),
        }),
    }
}

type Produced = (Value, String, BTreeMap<String, Value>);

#[allow(clippy::too_many_arguments)]
fn execute(
    lua: &Lua,
    dir: &Path,
    input: &Value,
    limits: &Limits,
    log: &Rc<RefCell<String>>,
    executed: &Rc<Cell<u64>>,
    stop: &Rc<Cell<Option<Stop>>>,
    started: Instant,
) -> Result<Produced, SchedulerError> {
    let setup = |err: mlua::Error| SchedulerError::Load(err.to_string());
    lua.set_memory_limit(limits.memory).map_err(setup)?;
    sandbox(lua, dir, input, log).map_err(setup)?;
    {
        let executed = Rc::clone(executed);
        let stop = Rc::clone(stop);
        let limits = *limits;
        lua.set_hook(
            HookTriggers::new().every_nth_instruction(HOOK_INTERVAL),
            move |_, _| {
                executed.set(executed.get() + u64::from(HOOK_INTERVAL));
                if executed.get() > limits.instructions {
                    stop.set(Some(Stop::Instructions));
                    return Err(mlua::Error::runtime("instruction limit exceeded"));
                }
                if started.elapsed() > limits.timeout {
                    stop.set(Some(Stop::Timeout));
                    return Err(mlua::Error::runtime("timeout"));
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(setup)?;
    }
    let main = dir.join("main.lua");
    let source = fs::read_to_string(&main).map_err(|err| SchedulerError::Read {
        path: main.clone(),
        message: err.to_string(),
    })?;
    let module: LuaValue = lua
        .load(source)
        .set_name("@main.lua")
        .set_mode(ChunkMode::Text)
        .call(())
        .map_err(|err| lua_error(err, limits))?;
    let function = match &module {
        LuaValue::Table(table) => match table.get::<LuaValue>("scheduler") {
            Ok(LuaValue::Function(function)) => function,
            Ok(other) => {
                return Err(SchedulerError::NoSchedulerFunction(format!(
                    "scheduler = {}",
                    other.type_name()
                )));
            }
            Err(err) => return Err(lua_error(err, limits)),
        },
        other => {
            return Err(SchedulerError::NoSchedulerFunction(
                other.type_name().to_owned(),
            ));
        }
    };
    // JSON null becomes nil, so `x.field or default` works as scripts expect.
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let argument = lua.to_value_with(input, options).map_err(setup)?;
    let results: MultiValue = function
        .call(argument)
        .map_err(|err| lua_error(err, limits))?;
    let mut results = results.into_iter();
    let schedule = results.next().unwrap_or(LuaValue::Nil);
    let debug_log = match results.next() {
        Some(LuaValue::String(text)) => text.to_string_lossy(),
        Some(LuaValue::Nil) | None => String::new(),
        Some(other) => lua_to_json(lua, other)
            .map(|v| v.to_string())
            .unwrap_or_default(),
    };
    let replies = match results.next() {
        Some(LuaValue::Table(table)) => match lua_to_json(lua, LuaValue::Table(table))? {
            Value::Object(map) => map.into_iter().collect(),
            _ => BTreeMap::new(),
        },
        _ => BTreeMap::new(),
    };
    let data = match schedule {
        LuaValue::String(text) => {
            let text = text.to_string_lossy();
            serde_json::from_str::<Value>(&text)
                .map_err(|err| SchedulerError::BadJson(err.to_string()))?
        }
        LuaValue::Table(table) => lua_to_json(lua, LuaValue::Table(table))?,
        other => return Err(SchedulerError::NotObject(other.type_name().to_owned())),
    };
    match data {
        Value::Object(_) => Ok((data, debug_log, replies)),
        other => Err(SchedulerError::NotObject(json_type(&other).to_owned())),
    }
}

fn lua_to_json(lua: &Lua, value: LuaValue) -> Result<Value, SchedulerError> {
    lua.from_value(value)
        .map_err(|err| SchedulerError::BadResult(err.to_string()))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn lua_error(err: mlua::Error, limits: &Limits) -> SchedulerError {
    if is_memory_error(&err) {
        return SchedulerError::MemoryLimit(limits.memory);
    }
    match err {
        mlua::Error::SyntaxError { message, .. } => SchedulerError::Load(message),
        other => SchedulerError::Runtime(other.to_string()),
    }
}

fn is_memory_error(err: &mlua::Error) -> bool {
    match err {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// Removes what a scheduler must not use and adds `print`, `require` and `debug.traceback`.
fn sandbox(lua: &Lua, dir: &Path, input: &Value, log: &Rc<RefCell<String>>) -> mlua::Result<()> {
    let globals = lua.globals();
    globals.set("dofile", LuaValue::Nil)?;
    globals.set("loadfile", LuaValue::Nil)?;

    // load(): text chunks only.
    let original_load: mlua::Function = globals.get("load")?;
    let load = lua.create_function(
        move |_, (chunk, name, _mode, env): (LuaValue, LuaValue, LuaValue, LuaValue)| {
            original_load.call::<MultiValue>((chunk, name, "t", env))
        },
    )?;
    globals.set("load", load)?;

    let collect = lua.create_function(|lua, option: Option<String>| match option.as_deref() {
        Some("count") => Ok(lua.used_memory() as f64 / 1024.0),
        other => Err(mlua::Error::runtime(format!(
            "collectgarbage({:?}) is not allowed in the scheduler; only \"count\"",
            other.unwrap_or("collect")
        ))),
    })?;
    globals.set("collectgarbage", collect)?;

    let print_log = Rc::clone(log);
    let print = lua.create_function(move |_, values: MultiValue| {
        let mut log = print_log.borrow_mut();
        let parts: Vec<String> = values
            .iter()
            .map(|value| {
                value
                    .to_string()
                    .unwrap_or_else(|_| value.type_name().to_owned())
            })
            .collect();
        log.push_str(&parts.join("\t"));
        log.push('\n');
        Ok(())
    })?;
    globals.set("print", print)?;

    let debug = lua.create_table()?;
    debug.set(
        "traceback",
        lua.create_function(|lua, (message, level): (Option<String>, Option<usize>)| {
            lua.traceback(message.as_deref(), level.unwrap_or(1))
        })?,
    )?;
    globals.set("debug", debug)?;

    // math.random is reproducible: seeded from the input.
    let digest = Sha1::digest(canonical_json(input).as_bytes());
    let seed = i64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
    let math: Table = globals.get("math")?;
    let randomseed: mlua::Function = math.get("randomseed")?;
    randomseed.call::<()>(seed)?;

    let loaded = lua.create_table()?;
    let root = dir.to_owned();
    let require = lua.create_function(move |lua, name: String| {
        if let Ok(
            value @ (LuaValue::Table(_)
            | LuaValue::Function(_)
            | LuaValue::Boolean(_)
            | LuaValue::String(_)
            | LuaValue::Number(_)
            | LuaValue::Integer(_)),
        ) = loaded.get::<LuaValue>(name.as_str())
        {
            return Ok(value);
        }
        let (path, text) = find_module(&root, &name).map_err(mlua::Error::runtime)?;
        let chunk_name = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let value: LuaValue = lua
            .load(text)
            .set_name(format!("@{chunk_name}"))
            .set_mode(ChunkMode::Text)
            .call(name.as_str())?;
        let value = if value.is_nil() {
            LuaValue::Boolean(true)
        } else {
            value
        };
        loaded.set(name.as_str(), value.clone())?;
        Ok(value)
    })?;
    globals.set("require", require)?;
    Ok(())
}

/// `a.b` → `<root>/a/b.lua` or `<root>/a/b/init.lua`; nothing outside `root`.
fn find_module(root: &Path, name: &str) -> Result<(PathBuf, String), String> {
    let relative = PathBuf::from(name.replace('.', "/"));
    if name.is_empty()
        || relative
            .components()
            .any(|component| !matches!(component, Component::Normal(_)))
    {
        return Err(format!("module {name:?}: invalid name"));
    }
    let candidates = [
        root.join(&relative).with_extension("lua"),
        root.join(&relative).join("init.lua"),
    ];
    for candidate in &candidates {
        if let Ok(text) = fs::read_to_string(candidate) {
            return Ok((candidate.clone(), text));
        }
    }
    Err(format!(
        "module {name:?} not found below {} (tried {name}.lua and {name}/init.lua)",
        root.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scheduler(main: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("main.lua"), main).unwrap();
        dir
    }

    fn run_main(main: &str, limits: &Limits) -> Result<Outcome, Failure> {
        let dir = scheduler(main);
        run(
            dir.path(),
            &json!({"now": 1, "peers": {}, "actions": {}, "gone": null}),
            limits,
        )
    }

    #[test]
    fn table_and_json_results_become_objects() {
        let out = run_main(
            r#"return {scheduler = function(input)
                print("now", input.now, input.gone == nil)
                return {vars = {n = 2}, roles = {}}, "log line"
            end}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(out.data, json!({"vars": {"n": 2}, "roles": {}}));
        assert_eq!(out.debug_log, "now\t1\ttrue\nlog line");
        let out = run_main(
            r#"return {scheduler = function() return '{"a": [1, 2]}', "" end}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(out.data, json!({"a": [1, 2]}));
    }

    #[test]
    fn bad_results_are_named() {
        let cases = [
            ("return nil", "scheduler returned nil, expected object"),
            ("return 42", "scheduler returned integer, expected object"),
            ("return {1, 2}", "scheduler returned array, expected object"),
            ("return '{'", "scheduler returned invalid JSON"),
            ("error('boom')", "boom"),
        ];
        for (body, expected) in cases {
            let main = format!("return {{scheduler = function(input) {body} end}}");
            let failure = run_main(&main, &Limits::default()).unwrap_err();
            assert!(
                failure.error.to_string().contains(expected),
                "{body}: {}",
                failure.error
            );
        }
        let failure = run_main("return {", &Limits::default()).unwrap_err();
        assert!(
            failure.error.to_string().contains("main.lua:1"),
            "{}",
            failure.error
        );
        let failure = run_main("return {}", &Limits::default()).unwrap_err();
        assert!(matches!(
            failure.error,
            SchedulerError::NoSchedulerFunction(_)
        ));
    }

    #[test]
    fn infinite_loop_hits_the_instruction_limit() {
        let limits = Limits {
            instructions: 1_000_000,
            ..Limits::default()
        };
        let failure = run_main(
            "return {scheduler = function() while true do end end}",
            &limits,
        )
        .unwrap_err();
        assert_eq!(failure.error, SchedulerError::InstructionLimit(1_000_000));
        assert_eq!(
            failure.error.to_string(),
            "instruction limit (1000000) exceeded"
        );
    }

    #[test]
    fn wall_clock_limit_stops_a_slow_script() {
        let limits = Limits {
            timeout: Duration::from_millis(50),
            ..Limits::default()
        };
        let failure = run_main(
            "return {scheduler = function() while true do end end}",
            &limits,
        )
        .unwrap_err();
        assert!(
            matches!(failure.error, SchedulerError::Timeout(_)),
            "{:?}",
            failure.error
        );
    }

    #[test]
    fn memory_bomb_hits_the_memory_limit() {
        let limits = Limits {
            memory: 16 << 20,
            ..Limits::default()
        };
        let failure = run_main(
            r#"return {scheduler = function() local s = "x" repeat s = s .. s until false end}"#,
            &limits,
        )
        .unwrap_err();
        assert_eq!(failure.error, SchedulerError::MemoryLimit(16 << 20));
    }

    #[test]
    fn unsafe_functions_are_gone() {
        for expr in ["os", "io", "dofile", "loadfile", "package", "debug.getinfo"] {
            let main =
                format!("return {{scheduler = function() return {{present = {expr} ~= nil}} end}}");
            let out = run_main(&main, &Limits::default()).unwrap();
            assert_eq!(out.data, json!({"present": false}), "{expr}");
        }
        let failure = run_main(
            r#"return {scheduler = function() return {x = load(string.dump(function() end))} end}"#,
            &Limits::default(),
        );
        // load() refuses binary chunks: it returns nil plus a message, so x is nil.
        assert_eq!(failure.unwrap().data, json!({}));
        let failure = run_main(
            r#"return {scheduler = function() collectgarbage("stop") return {} end}"#,
            &Limits::default(),
        )
        .unwrap_err();
        assert!(failure.error.to_string().contains("collectgarbage"));
    }

    #[test]
    fn require_stays_in_the_scheduler_dir_and_random_is_reproducible() {
        let dir = scheduler(
            r#"local lib = require("lib.util")
            return {scheduler = function(input)
                local ok = pcall(require, "..secret")
                return {x = lib.double(21), escaped = ok, r = math.random(1000000)}
            end}"#,
        );
        fs::create_dir(dir.path().join("lib")).unwrap();
        fs::write(
            dir.path().join("lib/util.lua"),
            "return {double = function(x) return x * 2 end}",
        )
        .unwrap();
        let input = json!({"now": 5});
        let first = run(dir.path(), &input, &Limits::default()).unwrap();
        let second = run(dir.path(), &input, &Limits::default()).unwrap();
        assert_eq!(first.data["x"], 42);
        assert_eq!(first.data["escaped"], false);
        assert_eq!(first.data, second.data, "same input, same schedule");
    }

    #[test]
    fn replies_come_from_the_third_result() {
        let out = run_main(
            r#"return {scheduler = function() return {}, "", {["123"] = {ok = true}} end}"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(out.replies["123"], json!({"ok": true}));
    }
}
