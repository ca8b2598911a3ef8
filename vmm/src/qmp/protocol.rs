//! QMP's message layer, without sockets: a client [`Session`] validates
//! each input object as QEMU's dispatcher does, runs the command against a
//! [`Machine`], and builds the reply (with the request's `id`).

use serde_json::{Map, Value, json};

use super::control::{Reply, Request};

/// What a command runs against: the machine's control interface (a fake
/// in tests). Called on the server's thread; may block briefly (`stop`
/// waits until every vCPU is parked).
pub trait Machine {
    fn call(&self, request: Request) -> Reply;
    /// `x-shmvm-snapshot-save`: writes the paused machine's snapshot to
    /// the directory `path`.
    fn snapshot_save(&self, path: &str) -> Reply {
        Err(format!(
            "cannot save a snapshot to '{path}': this machine has no snapshots"
        ))
    }
}

/// QMP error classes (QEMU's `QapiErrorClass`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
}

impl ErrorClass {
    fn name(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
        }
    }
}

/// An error reply's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: ErrorClass,
    pub desc: String,
}

fn generic(desc: impl Into<String>) -> QmpError {
    QmpError {
        class: ErrorClass::GenericError,
        desc: desc.into(),
    }
}

/// One command's argument: name, JSON type, required.
#[derive(Debug, Clone, Copy)]
struct Param {
    name: &'static str,
    kind: Kind,
    required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    StrList,
}

impl Kind {
    fn matches(self, v: &Value) -> bool {
        match self {
            Kind::Str => v.is_string(),
            Kind::Int => v.is_i64() || v.is_u64(),
            Kind::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Str => "string",
            Kind::Int => "integer",
            Kind::StrList => "array",
        }
    }
}

/// What a command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Capabilities,
    Version,
    Commands,
    Name,
    Machine(Request),
    Hmp,
    SnapshotSave,
}

struct Command {
    name: &'static str,
    params: &'static [Param],
    action: Action,
}

const NO_PARAMS: &[Param] = &[];

/// Every command shmvm answers; anything else is CommandNotFound.
const COMMANDS: &[Command] = &[
    Command {
        name: "qmp_capabilities",
        params: &[Param {
            name: "enable",
            kind: Kind::StrList,
            required: false,
        }],
        action: Action::Capabilities,
    },
    Command {
        name: "query-version",
        params: NO_PARAMS,
        action: Action::Version,
    },
    Command {
        name: "query-commands",
        params: NO_PARAMS,
        action: Action::Commands,
    },
    Command {
        name: "query-name",
        params: NO_PARAMS,
        action: Action::Name,
    },
    Command {
        name: "query-status",
        params: NO_PARAMS,
        action: Action::Machine(Request::Status),
    },
    Command {
        name: "stop",
        params: NO_PARAMS,
        action: Action::Machine(Request::Stop),
    },
    Command {
        name: "cont",
        params: NO_PARAMS,
        action: Action::Machine(Request::Cont),
    },
    Command {
        name: "system_powerdown",
        params: NO_PARAMS,
        action: Action::Machine(Request::Powerdown),
    },
    Command {
        name: "system_reset",
        params: NO_PARAMS,
        action: Action::Machine(Request::Reset),
    },
    Command {
        name: "quit",
        params: NO_PARAMS,
        action: Action::Machine(Request::Quit),
    },
    Command {
        name: "query-cpus-fast",
        params: NO_PARAMS,
        action: Action::Machine(Request::CpusFast),
    },
    Command {
        name: "query-memdev",
        params: NO_PARAMS,
        action: Action::Machine(Request::Memdev),
    },
    Command {
        name: "query-pci",
        params: NO_PARAMS,
        action: Action::Machine(Request::Pci),
    },
    Command {
        name: "x-shmvm-query-stats",
        params: NO_PARAMS,
        action: Action::Machine(Request::Stats),
    },
    // shmvm's own: QEMU's snapshot-save (a job writing into qcow2 disks
    // under a tag) and HMP savevm mean something else.
    Command {
        name: "x-shmvm-snapshot-save",
        params: &[Param {
            name: "path",
            kind: Kind::Str,
            required: true,
        }],
        action: Action::SnapshotSave,
    },
    Command {
        name: "human-monitor-command",
        params: &[
            Param {
                name: "command-line",
                kind: Kind::Str,
                required: true,
            },
            Param {
                name: "cpu-index",
                kind: Kind::Int,
                required: false,
            },
        ],
        action: Action::Hmp,
    },
];

/// The greeting's and `query-version`'s version: shmvm's own numbers
/// (it is not QEMU), with "shmvm" in `package`.
pub fn version() -> Value {
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    json!({
        "qemu": {
            "major": num(env!("CARGO_PKG_VERSION_MAJOR")),
            "minor": num(env!("CARGO_PKG_VERSION_MINOR")),
            "micro": num(env!("CARGO_PKG_VERSION_PATCH")),
        },
        "package": concat!("shmvm ", env!("CARGO_PKG_VERSION")),
    })
}

/// The first line a client reads. No capabilities: shmvm has no
/// out-of-band execution.
pub fn greeting() -> Value {
    json!({"QMP": {"version": version(), "capabilities": []}})
}

/// One client's protocol state.
#[derive(Debug, Default)]
pub struct Session {
    negotiated: bool,
}

/// A JSON parse error as QEMU words it.
pub fn parse_error(detail: &str) -> Value {
    error_reply(&generic(format!("JSON parse error, {detail}")), None)
}

fn error_reply(e: &QmpError, id: Option<Value>) -> Value {
    let mut o = Map::new();
    o.insert(
        "error".into(),
        json!({"class": e.class.name(), "desc": e.desc}),
    );
    if let Some(id) = id {
        o.insert("id".into(), id);
    }
    Value::Object(o)
}

impl Session {
    /// Whether `qmp_capabilities` succeeded (events flow from then on).
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// The reply to one input object.
    pub fn handle(&mut self, input: Value, vm: &dyn Machine) -> Value {
        let Value::Object(mut msg) = input else {
            return error_reply(&generic("QMP input must be a JSON object"), None);
        };
        let id = msg.remove("id");
        match self.dispatch(msg, vm) {
            Ok(ret) => {
                let mut o = Map::new();
                o.insert("return".into(), ret);
                if let Some(id) = id {
                    o.insert("id".into(), id);
                }
                Value::Object(o)
            }
            Err(e) => error_reply(&e, id),
        }
    }

    fn dispatch(
        &mut self,
        mut msg: Map<String, Value>,
        vm: &dyn Machine,
    ) -> Result<Value, QmpError> {
        let name = match msg.remove("execute") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(generic("QMP input member 'execute' must be a string")),
            None => return Err(generic("QMP input lacks member 'execute'")),
        };
        let args = match msg.remove("arguments") {
            Some(Value::Object(a)) => a,
            Some(_) => return Err(generic("QMP input member 'arguments' must be an object")),
            None => Map::new(),
        };
        if let Some(k) = msg.keys().next() {
            return Err(generic(format!("QMP input member '{k}' is unexpected")));
        }
        let not_found = |desc: String| QmpError {
            class: ErrorClass::CommandNotFound,
            desc,
        };
        let cmd = COMMANDS.iter().find(|c| c.name == name);
        if !self.negotiated && name != "qmp_capabilities" {
            return Err(not_found(
                "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
            ));
        }
        if self.negotiated && name == "qmp_capabilities" {
            return Err(not_found(
                "Capabilities negotiation is already complete, command ignored".into(),
            ));
        }
        let cmd = cmd.ok_or_else(|| not_found(format!("The command {name} has not been found")))?;
        check_args(cmd.params, &args)?;
        match cmd.action {
            Action::Capabilities => {
                if let Some(c) = args
                    .get("enable")
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                {
                    return Err(generic(format!(
                        "Capability '{}' not available",
                        c.as_str().unwrap_or_default()
                    )));
                }
                self.negotiated = true;
                Ok(json!({}))
            }
            Action::Version => Ok(version()),
            Action::Commands => Ok(Value::Array(
                COMMANDS.iter().map(|c| json!({"name": c.name})).collect(),
            )),
            Action::Name => Ok(json!({})),
            Action::Machine(r) => vm.call(r).map_err(generic),
            Action::Hmp => {
                let line = args
                    .get("command-line")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                hmp(line, vm).map(Value::String).map_err(generic)
            }
            Action::SnapshotSave => {
                let path = args.get("path").and_then(Value::as_str).unwrap_or_default();
                vm.snapshot_save(path).map_err(generic)
            }
        }
    }
}

/// QEMU's checks of `arguments` against a command's parameters.
fn check_args(params: &[Param], args: &Map<String, Value>) -> Result<(), QmpError> {
    for k in args.keys() {
        if !params.iter().any(|p| p.name == k) {
            return Err(generic(format!("Parameter '{k}' is unexpected")));
        }
    }
    for p in params {
        match args.get(p.name) {
            None if p.required => {
                return Err(generic(format!("Parameter '{}' is missing", p.name)));
            }
            Some(v) if !p.kind.matches(v) => {
                return Err(generic(format!(
                    "Invalid parameter type for '{}', expected: {}",
                    p.name,
                    p.kind.name()
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The HMP commands that map onto QMP ones; output as QEMU prints it.
fn hmp(line: &str, vm: &dyn Machine) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Ok(String::new()),
        ["info", "status"] => {
            let s = vm.call(Request::Status)?;
            let status = s.get("status").and_then(Value::as_str).unwrap_or("running");
            Ok(format!("VM status: {status}\r\n"))
        }
        ["stop"] => vm.call(Request::Stop).map(|_| String::new()),
        ["cont" | "c"] => vm.call(Request::Cont).map(|_| String::new()),
        ["quit" | "q"] => vm.call(Request::Quit).map(|_| String::new()),
        ["system_powerdown"] => vm.call(Request::Powerdown).map(|_| String::new()),
        ["system_reset"] => vm.call(Request::Reset).map(|_| String::new()),
        ["info", other, ..] => Ok(format!("unknown command: 'info {other}'\r\n")),
        [cmd, ..] => Ok(format!("unknown command: '{cmd}'\r\n")),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<Request>>,
    }

    impl Machine for Fake {
        fn call(&self, r: Request) -> Reply {
            self.calls.borrow_mut().push(r);
            match r {
                Request::Status => Ok(json!({"status": "paused", "running": false})),
                Request::Pci => Err("boom".into()),
                _ => Ok(json!({})),
            }
        }
    }

    fn run(s: &mut Session, vm: &Fake, text: &str) -> Value {
        s.handle(serde_json::from_str(text).unwrap(), vm)
    }

    fn class(v: &Value) -> &str {
        v["error"]["class"].as_str().unwrap_or("none")
    }

    #[test]
    fn snapshot_save_takes_a_path_and_qemus_savevm_is_unknown() {
        let (mut s, vm) = (Session::default(), Fake::default());
        run(&mut s, &vm, r#"{"execute":"qmp_capabilities"}"#);
        let r = run(&mut s, &vm, r#"{"execute":"x-shmvm-snapshot-save"}"#);
        assert_eq!(r["error"]["desc"], "Parameter 'path' is missing");
        let r = run(
            &mut s,
            &vm,
            r#"{"execute":"x-shmvm-snapshot-save","arguments":{"path":"/tmp/s"}}"#,
        );
        assert!(
            r["error"]["desc"].as_str().unwrap().contains("/tmp/s"),
            "{r}"
        );
        let r = run(&mut s, &vm, r#"{"execute":"snapshot-save"}"#);
        assert_eq!(class(&r), "CommandNotFound");
    }

    #[test]
    fn negotiation_first_as_qemu() {
        let (mut s, vm) = (Session::default(), Fake::default());
        let r = run(&mut s, &vm, r#"{"execute":"query-status","id":1}"#);
        assert_eq!((class(&r), &r["id"]), ("CommandNotFound", &json!(1)));
        let r = run(
            &mut s,
            &vm,
            r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#,
        );
        assert_eq!(class(&r), "GenericError");
        assert!(!s.negotiated());
        let r = run(&mut s, &vm, r#"{"execute":"qmp_capabilities","id":"a"}"#);
        assert_eq!(r, json!({"return": {}, "id": "a"}));
        let r = run(&mut s, &vm, r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(class(&r), "CommandNotFound");
        assert!(vm.calls.borrow().is_empty());
    }

    #[test]
    fn malformed_inputs_get_qemus_errors() {
        let (mut s, vm) = (Session::default(), Fake::default());
        run(&mut s, &vm, r#"{"execute":"qmp_capabilities"}"#);
        let cases = [
            ("[1]", "QMP input must be a JSON object"),
            (r#"{"id":3}"#, "QMP input lacks member 'execute'"),
            (
                r#"{"execute":1}"#,
                "QMP input member 'execute' must be a string",
            ),
            (
                r#"{"execute":"query-status","arguments":[]}"#,
                "QMP input member 'arguments' must be an object",
            ),
            (
                r#"{"execute":"query-status","foo":1}"#,
                "QMP input member 'foo' is unexpected",
            ),
            (
                r#"{"execute":"query-status","arguments":{"a":1}}"#,
                "Parameter 'a' is unexpected",
            ),
            (
                r#"{"execute":"human-monitor-command"}"#,
                "Parameter 'command-line' is missing",
            ),
            (
                r#"{"execute":"human-monitor-command","arguments":{"command-line":1}}"#,
                "Invalid parameter type for 'command-line', expected: string",
            ),
            (
                r#"{"execute":"nope","id":"x"}"#,
                "The command nope has not been found",
            ),
            (r#"{"execute":"query-pci"}"#, "boom"),
        ];
        for (input, desc) in cases {
            let r = run(&mut s, &vm, input);
            assert_eq!(r["error"]["desc"], json!(desc), "{input}");
        }
        let r = run(&mut s, &vm, r#"{"execute":"nope","id":{"deep":[1]}}"#);
        assert_eq!(
            (class(&r), &r["id"]),
            ("CommandNotFound", &json!({"deep": [1]}))
        );
    }

    #[test]
    fn hmp_maps_onto_qmp() {
        let (mut s, vm) = (Session::default(), Fake::default());
        run(&mut s, &vm, r#"{"execute":"qmp_capabilities"}"#);
        let hmp = |s: &mut Session, line: &str| {
            run(
                s,
                &vm,
                &json!({"execute": "human-monitor-command", "arguments": {"command-line": line}})
                    .to_string(),
            )["return"]
                .clone()
        };
        assert_eq!(hmp(&mut s, "info status"), json!("VM status: paused\r\n"));
        assert_eq!(hmp(&mut s, "stop"), json!(""));
        assert_eq!(hmp(&mut s, "cont"), json!(""));
        assert_eq!(
            hmp(&mut s, "bogus 1"),
            json!("unknown command: 'bogus'\r\n")
        );
        assert_eq!(
            *vm.calls.borrow(),
            [Request::Status, Request::Stop, Request::Cont]
        );
        let r = run(&mut s, &vm, r#"{"execute":"query-commands"}"#);
        let names: Vec<_> = r["return"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert!(names.contains(&json!("x-shmvm-query-stats")) && names.contains(&json!("quit")));
    }
}
