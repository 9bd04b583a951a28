//! Argo CD's view of a PostgresCluster: the health script users install in
//! `argocd-cm` (`docs/argocd-health.lua`, built into this crate) run by a
//! real Lua interpreter the way Argo CD runs it, with the object as the
//! global `obj`, returning `hs.status`/`hs.message`.
//!
//! Argo CD embeds gopher-lua (Lua 5.1); here Debian's `lua5.4` package (or
//! any `lua` on `PATH`, or `$CAPSTAN_LUA`) runs it, so the script keeps to
//! what both understand. Without an interpreter [`argocd_health`] returns
//! `None` and says why, except under `CI=true`, where that is an error.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::E2eError;

/// The health script, `docs/argocd-health.lua`.
pub const HEALTH_SCRIPT: &str = include_str!("../../docs/argocd-health.lua");
/// The `argocd-cm` key users put [`HEALTH_SCRIPT`] under.
pub const HEALTH_KEY: &str = "resource.customizations.health.capstan.dev_PostgresCluster";
/// Interpreters tried in this order when `$CAPSTAN_LUA` is not set.
pub const INTERPRETERS: &[&str] = &["lua5.4", "lua"];
/// The Debian package that provides `lua5.4`.
pub const LUA_PACKAGE: &str = "lua5.4";

/// Argo CD's health statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgoStatus {
    Healthy,
    Progressing,
    Degraded,
    Suspended,
    Missing,
    Unknown,
}

impl ArgoStatus {
    pub fn parse(word: &str) -> Option<ArgoStatus> {
        Some(match word {
            "Healthy" => ArgoStatus::Healthy,
            "Progressing" => ArgoStatus::Progressing,
            "Degraded" => ArgoStatus::Degraded,
            "Suspended" => ArgoStatus::Suspended,
            "Missing" => ArgoStatus::Missing,
            "Unknown" => ArgoStatus::Unknown,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ArgoStatus::Healthy => "Healthy",
            ArgoStatus::Progressing => "Progressing",
            ArgoStatus::Degraded => "Degraded",
            ArgoStatus::Suspended => "Suspended",
            ArgoStatus::Missing => "Missing",
            ArgoStatus::Unknown => "Unknown",
        }
    }
}

impl std::fmt::Display for ArgoStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the health script returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgoHealth {
    pub status: ArgoStatus,
    pub message: String,
}

/// Argo CD's health of `object` (a PostgresCluster as the API server
/// returns it, e.g. `serde_json::to_value(&cluster)`) by [`HEALTH_SCRIPT`].
/// `None` when no Lua interpreter is installed and `CI` is not `true` (the
/// reason is printed); an error when the script fails or returns something
/// that is not a health.
pub fn argocd_health(object: &serde_json::Value) -> Result<Option<ArgoHealth>, E2eError> {
    let Some(lua) = interpreter()? else {
        return Ok(None);
    };
    health_with(&lua, HEALTH_SCRIPT, object).map(Some)
}

/// Runs `script` as Argo CD does (chunk with the global `obj`, its return
/// value the health) with interpreter `lua`.
pub fn health_with(
    lua: &str,
    script: &str,
    object: &serde_json::Value,
) -> Result<ArgoHealth, E2eError> {
    let program = format!(
        r#"obj = {object}
local source = {script}
local compile = loadstring or load
local chunk, err = compile(source, "=argocd-health.lua")
if chunk == nil then
  io.stderr:write("cannot load the health script: ", tostring(err))
  os.exit(3)
end
local ok, hs = pcall(chunk)
if not ok then
  io.stderr:write("the health script failed: ", tostring(hs))
  os.exit(4)
end
if type(hs) ~= "table" then
  io.stderr:write("the health script returned a ", type(hs), ", not a table")
  os.exit(5)
end
if type(hs.status) ~= "string" then
  io.stderr:write("hs.status is a ", type(hs.status), ", not a string")
  os.exit(6)
end
io.write(hs.status, "\n", tostring(hs.message or ""))
"#,
        object = lua_literal(object),
        script = lua_string(script.as_bytes()),
    );
    let out = run_lua(lua, &program)?;
    let text = String::from_utf8(out)
        .map_err(|e| E2eError::Check(format!("the health script wrote no UTF-8: {e}")))?;
    let (word, message) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    let status = ArgoStatus::parse(word).ok_or_else(|| {
        E2eError::Check(format!(
            "the health script returned status {word:?}, not one of Argo CD's"
        ))
    })?;
    Ok(ArgoHealth {
        status,
        message: message.to_string(),
    })
}

/// The Lua interpreter to use: `$CAPSTAN_LUA`, else the first of
/// [`INTERPRETERS`] that runs. `None` (with the reason printed) when there
/// is none, unless `CI=true`.
pub fn interpreter() -> Result<Option<String>, E2eError> {
    let candidates: Vec<String> = match std::env::var("CAPSTAN_LUA") {
        Ok(lua) if !lua.is_empty() => vec![lua],
        _ => INTERPRETERS.iter().map(|s| s.to_string()).collect(),
    };
    for lua in &candidates {
        let probe = Command::new(lua)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if probe.is_ok_and(|s| s.success()) {
            return Ok(Some(lua.clone()));
        }
    }
    let why = format!(
        "no Lua interpreter ({}) on PATH to run the Argo CD health script: \
         install Debian's `{LUA_PACKAGE}` package (apt-get install {LUA_PACKAGE})",
        candidates.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        return Err(E2eError::Setup(why));
    }
    eprintln!("SKIP Argo CD health check: {why}");
    Ok(None)
}

/// Runs `program` (Lua source) with `lua`, fed on standard input: its
/// standard output, or an error with what it printed.
pub fn run_lua(lua: &str, program: &str) -> Result<Vec<u8>, E2eError> {
    let mut child = Command::new(lua)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| E2eError::Setup(format!("cannot run {lua}: {e}")))?;
    // Dropped (closed) at the end of this block, so Lua sees the end.
    {
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| E2eError::Setup(format!("{lua}: no standard input")))?;
        stdin
            .write_all(program.as_bytes())
            .map_err(|e| E2eError::Setup(format!("writing the program to {lua}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| E2eError::Setup(format!("waiting for {lua}: {e}")))?;
    if !out.status.success() {
        return Err(E2eError::Check(format!(
            "{lua} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    Ok(out.stdout)
}

/// `value` as a Lua table constructor expression, as Argo CD hands objects
/// to health scripts: objects are tables keyed by strings, arrays are
/// sequences (1-based), `null` is `nil` (an absent key), numbers and
/// booleans are themselves.
pub fn lua_literal(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_literal(value, &mut out);
    out
}

fn write_literal(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Null => out.push_str("nil"),
        serde_json::Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // JSON's number syntax is a subset of Lua's (`-` is unary minus);
        // integers beyond 64 bits become floats in both.
        serde_json::Value::Number(n) => out.push_str(&n.to_string()),
        serde_json::Value::String(s) => out.push_str(&lua_string(s.as_bytes())),
        serde_json::Value::Array(items) => {
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_literal(item, out);
            }
            out.push('}');
        }
        serde_json::Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push('[');
                out.push_str(&lua_string(key.as_bytes()));
                out.push_str("] = ");
                write_literal(item, out);
            }
            out.push('}');
        }
    }
}

/// `bytes` as a double-quoted Lua string literal that Lua 5.1 to 5.4 read
/// back byte for byte: printable ASCII as is except `"` and `\`, which are
/// escaped, `\n`, `\r`, `\t`, and every other byte as a three-digit decimal
/// escape (`\ddd` reads at most three digits, so a digit after it is never
/// taken in).
pub fn lua_string(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Strings that break naive quoting.
    const AWKWARD: &[&str] = &[
        "",
        "plain",
        "say \"hi\"",
        "back\\slash at the end\\",
        "\\\"",
        "line\nbreak\r\nand\ttab",
        "]]--[[ long bracket ]==] and a comment --",
        "'single' and `back`",
        "nul \u{0} then digits 123",
        "\u{1}23\u{7f}",
        "é ü ß 漢字 🐘",
        "$(VAR) %s %d {{ }} \\u0041",
        "\\ddd: \\065 stays text",
    ];

    /// The interpreter, or `None` (printed) when the machine has none.
    fn lua() -> Option<String> {
        interpreter().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn strings_are_escaped_for_lua() {
        assert_eq!(lua_string(b"plain"), r#""plain""#);
        assert_eq!(lua_string(br#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(lua_string(b"x\ny\r\tz"), r#""x\ny\r\tz""#);
        // Three digits always: \0 followed by "12" is not \012.
        assert_eq!(lua_string(b"\x0012"), r#""\00012""#);
        assert_eq!(lua_string("é".as_bytes()), r#""\195\169""#);
        assert_eq!(lua_string(b"]]"), r#""]]""#);
        assert_eq!(lua_string(b"\x7f\xff"), r#""\127\255""#);
    }

    #[test]
    fn json_becomes_a_table_constructor() {
        let value = json!({
            "a.b/c": [1, -2.5, true, null, "x"],
            "with \"quote\"": {"n": 18446744073709551615u64, "e": 1e300},
            "empty": {},
            "list": [],
        });
        assert_eq!(
            lua_literal(&value),
            r#"{["a.b/c"] = {1, -2.5, true, nil, "x"}, ["empty"] = {}, ["list"] = {}, ["with \"quote\""] = {["e"] = 1e+300, ["n"] = 18446744073709551615}}"#
        );
    }

    #[test]
    fn awkward_strings_reach_lua_byte_for_byte() {
        let Some(lua) = lua() else { return };
        let value = json!({
            "list": AWKWARD,
            "numbers": {"big": 18446744073709551615u64, "e": 1e300, "neg": -2.5, "g": 7},
            "keys": AWKWARD.iter().map(|s| (s.to_string(), json!(s.len()))).collect::<serde_json::Map<_, _>>(),
        });
        // Each string as `<length>:<bytes>`, then each key's value (its
        // length) read back by the key itself.
        let program = format!(
            r#"obj = {}
for _, s in ipairs(obj.list) do io.write(#s, ":", s, "|") end
for _, s in ipairs(obj.list) do io.write(obj.keys[s], ",") end
local n = obj.numbers
io.write(tostring(n.big > 1.8e19 and n.e == 1e300 and n.neg == -2.5 and n.g == 7))
"#,
            lua_literal(&value)
        );
        let out = run_lua(&lua, &program).unwrap();
        let mut expected = Vec::new();
        for s in AWKWARD {
            expected.extend_from_slice(format!("{}:", s.len()).as_bytes());
            expected.extend_from_slice(s.as_bytes());
            expected.push(b'|');
        }
        for s in AWKWARD {
            expected.extend_from_slice(format!("{},", s.len()).as_bytes());
        }
        expected.extend_from_slice(b"true");
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(out, expected);
    }

    fn condition(
        kind: &str,
        status: bool,
        reason: &str,
        message: &str,
        g: i64,
    ) -> serde_json::Value {
        json!({
            "type": kind,
            "status": if status { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "observedGeneration": g,
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        })
    }

    /// A PostgresCluster as the API server returns it, with status
    /// `observedGeneration` and conditions (Ready, Reconciling, Stalled,
    /// Degraded).
    fn cluster(
        generation: i64,
        observed: i64,
        conditions: Vec<serde_json::Value>,
    ) -> serde_json::Value {
        json!({
            "apiVersion": "capstan.dev/v1alpha1",
            "kind": "PostgresCluster",
            "metadata": {
                "name": "db",
                "namespace": "ns",
                "generation": generation,
                "labels": {"app.kubernetes.io/name": "db"},
                "annotations": {"capstan.dev/switchover": null},
            },
            "spec": {"instances": 3, "postgres": {"version": 17}},
            "status": {
                "observedGeneration": observed,
                "phase": "Ready",
                "readyInstances": 3,
                "conditions": conditions,
                "instances": [{"name": "db-1", "role": "primary", "ready": true}],
            },
        })
    }

    fn health(object: &serde_json::Value) -> Option<ArgoHealth> {
        argocd_health(object).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ready_conditions(g: i64) -> Vec<serde_json::Value> {
        vec![
            condition(
                "Ready",
                true,
                "Ready",
                "3 instance(s) and 2 pooler(s) ready",
                g,
            ),
            condition("Reconciling", false, "Idle", "nothing to do", g),
            condition("Stalled", false, "Reconciled", "the spec can be applied", g),
            condition(
                "Degraded",
                false,
                "AllReady",
                "all instances and poolers are ready",
                g,
            ),
        ]
    }

    #[test]
    fn a_ready_cluster_is_healthy() {
        let Some(h) = health(&cluster(3, 3, ready_conditions(3))) else {
            return;
        };
        assert_eq!(
            h,
            ArgoHealth {
                status: ArgoStatus::Healthy,
                message: "3 instance(s) and 2 pooler(s) ready".into()
            }
        );
    }

    #[test]
    fn a_stalled_cluster_is_degraded_with_the_stalled_message() {
        let message = "spec.postgres.parameters.work_mem: invalid value for parameter \"work_mem\": \"lots\"\nHINT: Valid units… é";
        let conditions = vec![
            condition(
                "Ready",
                true,
                "Ready",
                "3 instance(s) and 2 pooler(s) ready",
                7,
            ),
            condition("Reconciling", true, "Applying", "applying parameters", 7),
            condition("Stalled", true, "ParametersRefused", message, 7),
            condition("Degraded", false, "AllReady", "all ready", 7),
        ];
        let Some(h) = health(&cluster(7, 7, conditions)) else {
            return;
        };
        assert_eq!(h.status, ArgoStatus::Degraded);
        assert_eq!(h.message, message);
    }

    #[test]
    fn a_rollout_is_progressing() {
        // The operator has not seen generation 5 yet: its Ready status is old.
        let Some(h) = health(&cluster(5, 4, ready_conditions(4))) else {
            return;
        };
        assert_eq!(h.status, ArgoStatus::Progressing);
        assert!(h.message.contains("generation 5"), "{}", h.message);
        assert!(h.message.contains("describes 4"), "{}", h.message);
        // A Stalled condition of an older spec is not the new spec's fault.
        let mut stale = ready_conditions(4);
        stale[2] = condition("Stalled", true, "ParametersRefused", "old", 4);
        let h = health(&cluster(5, 4, stale)).unwrap();
        assert_eq!(h.status, ArgoStatus::Progressing);
        // Seen, and rolling: Reconciling says what it does.
        let mut rolling = ready_conditions(5);
        rolling[1] = condition(
            "Reconciling",
            true,
            "RollingUpdate",
            "re-creating replica db-2 (1/3)",
            5,
        );
        rolling[3] = condition("Degraded", true, "NotAllReady", "2/3 instance(s) ready", 5);
        let h = health(&cluster(5, 5, rolling)).unwrap();
        assert_eq!(
            h,
            ArgoHealth {
                status: ArgoStatus::Progressing,
                message: "re-creating replica db-2 (1/3)".into()
            }
        );
    }

    #[test]
    fn a_degraded_cluster_is_degraded() {
        let mut conditions = ready_conditions(2);
        conditions[0] = condition("Ready", true, "Ready", "ready", 2);
        conditions[3] = condition(
            "Degraded",
            true,
            "VolumeFull",
            "data volume of db-1 is 91% full at its autoGrow limit 256Mi",
            2,
        );
        let Some(h) = health(&cluster(2, 2, conditions)) else {
            return;
        };
        assert_eq!(
            h,
            ArgoHealth {
                status: ArgoStatus::Degraded,
                message: "data volume of db-1 is 91% full at its autoGrow limit 256Mi".into()
            }
        );
    }

    #[test]
    fn without_status_it_waits() {
        let mut object = cluster(1, 1, vec![]);
        let Some(lua) = lua() else { return };
        object.as_object_mut().unwrap().remove("status");
        let h = health_with(&lua, HEALTH_SCRIPT, &object).unwrap();
        assert_eq!(
            h,
            ArgoHealth {
                status: ArgoStatus::Progressing,
                message: "waiting for status".into()
            }
        );
        // Creating: not ready yet, nothing reconciling, nothing wrong.
        let conditions = vec![condition(
            "Ready",
            false,
            "NotReady",
            "1/3 instance(s) ready",
            1,
        )];
        let h = health_with(&lua, HEALTH_SCRIPT, &cluster(1, 1, conditions)).unwrap();
        assert_eq!(
            h,
            ArgoHealth {
                status: ArgoStatus::Progressing,
                message: "1/3 instance(s) ready".into()
            }
        );
    }

    #[test]
    fn a_broken_script_is_an_error() {
        let Some(lua) = lua() else { return };
        let object = cluster(1, 1, vec![]);
        let err = health_with(&lua, "return nil", &object).unwrap_err();
        assert!(err.to_string().contains("returned a nil"), "{err}");
        let err = health_with(&lua, "error('boom')", &object).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        let err = health_with(&lua, "return {status = 'Fine'}", &object).unwrap_err();
        assert!(err.to_string().contains("\"Fine\""), "{err}");
        let err = health_with(&lua, "this is not lua", &object).unwrap_err();
        assert!(err.to_string().contains("cannot load"), "{err}");
    }
}
