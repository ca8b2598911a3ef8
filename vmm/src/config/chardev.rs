//! `-chardev`, `-serial`, `-mon` and `-qmp`: where COM1 goes, which
//! sockets vhost-user devices connect to and which QMP sockets to listen on.
//!
//! `-serial stdio | mon:stdio | none | null | file:PATH | chardev:ID`;
//! `-chardev socket,id=ID,path=PATH` (a vhost-user back-end),
//! `-chardev socket,id=ID,path=PATH,server=on,wait=off` with
//! `-mon chardev=ID,mode=control` and `-qmp unix:PATH,server=on,wait=off`
//! (QMP monitors) or as a virtio-serial port's back-end,
//! `-chardev stdio,id=ID[,mux=on][,signal=off]`, `-chardev file,id=ID,path=PATH`,
//! `-chardev null,id=ID`. A multiplexed stdio (`mon:stdio`, `mux=on`) takes
//! QEMU's Ctrl-A escapes (see `serial_mux`); there is no monitor behind it.

use std::path::PathBuf;

use super::keyval::{self, KeyVal};
use super::{Error, Prop, TypeInfo, invalid};
use crate::vhost_user::ChardevConfig;

/// One QMP socket to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    pub path: PathBuf,
}

/// Where COM1's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    Stdio,
    File(PathBuf),
    None,
}

/// How a stdio console treats the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StdioOptions {
    /// QEMU's mux: Ctrl-A escapes (`mon:stdio`, `-chardev stdio,mux=on`).
    pub mux: bool,
    /// Ctrl-C stops the VMM (`signal=on`, the default); off: it goes to the guest.
    pub signal: bool,
}

impl Default for StdioOptions {
    fn default() -> StdioOptions {
        StdioOptions {
            mux: false,
            signal: true,
        }
    }
}

const ID: Prop = Prop::new("id", "string", "(required)", "the chardev's name");
/// The `-chardev` back-ends, for help.
pub const TYPES: &[TypeInfo] = &[
    TypeInfo::new(
        "socket",
        "a unix socket: a vhost-user back-end's, or one shmvm listens on",
        &[ID],
        &[
            Prop::new("path", "path", "(required)", "the unix socket"),
            Prop::new(
                "server",
                "bool",
                "off",
                "off: shmvm connects (vhost-user); on (with wait=off): shmvm listens (a QMP monitor for -mon chardev=ID, or a virtserialport's)",
            ),
            Prop::new("wait", "bool", "on", "with server=on: must be off"),
        ],
    ),
    TypeInfo::new(
        "stdio",
        "standard input and output",
        &[ID],
        &[
            Prop::new("mux", "bool", "off", "Ctrl-A escapes (C-a h lists them)"),
            Prop::new("signal", "bool", "on", "off: Ctrl-C goes to the guest"),
        ],
    ),
    TypeInfo::new(
        "file",
        "output to a file",
        &[ID],
        &[Prop::new("path", "path", "(required)", "the file")],
    ),
    TypeInfo::new("null", "discard output", &[ID], &[]),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Backend {
    /// shmvm connects (a vhost-user back-end, an ivshmem server).
    Socket(PathBuf),
    /// shmvm listens (`server=on,wait=off`): a QMP monitor for `-mon`.
    Server(PathBuf),
    Stdio(StdioOptions),
    File(PathBuf),
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chardev {
    pub(crate) id: String,
    pub(crate) backend: Backend,
}

pub(crate) fn parse_chardev(spec: &str) -> Result<Chardev, Error> {
    let mut kv = super::keyval("-chardev", spec, Some("backend"))?;
    let bad = |reason: String| invalid("-chardev", format!("'{spec}': {reason}"));
    let kve = |e: super::keyval::Error| bad(e.to_string());
    let backend = kv.take("backend").unwrap_or_default();
    let id = kv
        .take_str("id")
        .map_err(kve)?
        .ok_or_else(|| bad("id= is required".into()))?;
    let backend = match backend.as_str() {
        "socket" => {
            let path = kv
                .take_str("path")
                .map_err(kve)?
                .ok_or_else(|| bad("path= is required (a unix socket)".into()))?;
            let server = kv.take_bool("server").map_err(kve)?.unwrap_or(false);
            let wait = take_wait(&mut kv).map_err(kve)?;
            if server {
                check_listening(wait).map_err(bad)?;
                Backend::Server(PathBuf::from(path))
            } else {
                // QEMU's default: connect to a listening back-end.
                Backend::Socket(PathBuf::from(path))
            }
        }
        "stdio" => Backend::Stdio(StdioOptions {
            mux: kv.take_bool("mux").map_err(kve)?.unwrap_or(false),
            signal: kv.take_bool("signal").map_err(kve)?.unwrap_or(true),
        }),
        "file" => Backend::File(PathBuf::from(
            kv.take_str("path")
                .map_err(kve)?
                .ok_or_else(|| bad("path= is required".into()))?,
        )),
        "null" => Backend::Null,
        other => {
            return Err(invalid(
                "-chardev",
                format!(
                    "'{spec}': backend '{other}' is not supported (socket, stdio, file, null; see -chardev help)"
                ),
            ));
        }
    };
    let known: Vec<&str> = TYPES
        .iter()
        .find(|t| t.name == backend_name(&backend))
        .map(TypeInfo::names)
        .unwrap_or_default();
    kv.finish(&known).map_err(|e| bad(format!("{e}")))?;
    Ok(Chardev { id, backend })
}

/// `wait` (on unless given), or QEMU's legacy bare `nowait`.
fn take_wait(kv: &mut KeyVal) -> Result<bool, keyval::Error> {
    let nowait = kv.take_bool("nowait")?;
    Ok(kv.take_bool("wait")?.or(nowait.map(|n| !n)).unwrap_or(true))
}

/// A listening socket must not wait for its first client: shmvm starts
/// the guest at once.
fn check_listening(wait: bool) -> Result<(), String> {
    if wait {
        return Err("wait=on is not supported with server=on (add wait=off)".into());
    }
    Ok(())
}

/// `-qmp unix:PATH,server=on,wait=off` (also `server,nowait`).
fn parse_qmp(spec: &str) -> Result<MonitorConfig, Error> {
    let bad = |reason: String| invalid("-qmp", format!("'{spec}': {reason}"));
    let kve = |e: keyval::Error| bad(e.to_string());
    let mut kv = super::keyval("-qmp", spec, Some("target"))?;
    let target = kv.take("target").unwrap_or_default();
    let path = target
        .strip_prefix("unix:")
        .ok_or_else(|| bad("only unix:PATH sockets are supported".into()))?;
    if path.is_empty() {
        return Err(bad("the socket path is empty".into()));
    }
    if kv.take_bool("server").map_err(kve)? != Some(true) {
        return Err(bad("only server=on is supported (shmvm listens)".into()));
    }
    check_listening(take_wait(&mut kv).map_err(kve)?).map_err(bad)?;
    kv.finish(&["server", "wait"]).map_err(kve)?;
    Ok(MonitorConfig {
        path: PathBuf::from(path),
    })
}

fn backend_name(b: &Backend) -> &'static str {
    match b {
        Backend::Socket(_) | Backend::Server(_) => "socket",
        Backend::Stdio(_) => "stdio",
        Backend::File(_) => "file",
        Backend::Null => "null",
    }
}

/// The console and the sockets, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSetup {
    pub mode: SerialMode,
    pub stdio: StdioOptions,
    /// Socket chardevs, for `vhost-user-blk-pci,chardev=ID`.
    pub sockets: Vec<ChardevConfig>,
    /// QMP sockets to listen on: every `-qmp`, then every `-mon` on a
    /// listening `-chardev socket`.
    pub monitors: Vec<MonitorConfig>,
    /// Listening socket chardevs no `-mon` uses: for virtio-serial ports.
    pub listeners: Vec<String>,
}

/// Resolves `-serial` (the first is COM1), `-mon` and `-qmp` against
/// `-chardev`; `nographic` makes the default console `mon:stdio`, as in QEMU.
pub fn resolve_serial(
    serial: &[String],
    chardevs: &[String],
    mon: &[String],
    qmp: &[String],
    nographic: bool,
) -> Result<SerialSetup, Error> {
    let chardevs = chardevs
        .iter()
        .map(|c| parse_chardev(c))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, c) in chardevs.iter().enumerate() {
        if chardevs[..i].iter().any(|o| o.id == c.id) {
            return Err(invalid("-chardev", format!("duplicate id '{}'", c.id)));
        }
    }
    for extra in serial.iter().skip(1) {
        if !matches!(extra.as_str(), "none" | "null") {
            return Err(invalid(
                "-serial",
                format!(
                    "'{extra}': shmvm has one serial port (COM1); a second -serial can only be none"
                ),
            ));
        }
    }
    let mut stdio = StdioOptions::default();
    let mut console_chardev = None;
    let default = if nographic { "mon:stdio" } else { "stdio" };
    let first = serial.first().map_or(default, String::as_str);
    let mode = match first {
        "stdio" => SerialMode::Stdio,
        "mon:stdio" => {
            stdio.mux = true;
            SerialMode::Stdio
        }
        "none" | "null" => SerialMode::None,
        s => {
            if let Some(p) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
                SerialMode::File(PathBuf::from(p))
            } else if let Some(id) = s.strip_prefix("chardev:") {
                let c = chardevs.iter().find(|c| c.id == id).ok_or_else(|| {
                    invalid("-serial", format!("'{s}': no -chardev with id={id}"))
                })?;
                console_chardev = Some(c.id.clone());
                match &c.backend {
                    Backend::Stdio(o) => {
                        stdio = *o;
                        SerialMode::Stdio
                    }
                    Backend::File(p) => SerialMode::File(p.clone()),
                    Backend::Null => SerialMode::None,
                    Backend::Socket(_) | Backend::Server(_) => {
                        return Err(invalid(
                            "-serial",
                            format!("'{s}': a socket chardev as console is not supported"),
                        ));
                    }
                }
            } else {
                return Err(invalid(
                    "-serial",
                    format!(
                        "'{s}' is not supported (stdio, mon:stdio, file:PATH, chardev:ID, none)"
                    ),
                ));
            }
        }
    };
    let mut monitors = qmp
        .iter()
        .map(|q| parse_qmp(q))
        .collect::<Result<Vec<_>, _>>()?;
    let mut listened = Vec::new();
    for m in mon {
        let bad = |reason: String| invalid("-mon", format!("'{m}': {reason}"));
        let mut kv = super::keyval("-mon", m, Some("chardev"))?;
        let id = kv.take("chardev").unwrap_or_default();
        let mode = kv.take("mode");
        let pretty = kv.take_bool("pretty").map_err(|e| bad(e.to_string()))?;
        kv.finish(&["chardev", "mode", "pretty"])
            .map_err(|e| bad(e.to_string()))?;
        if id.is_empty() {
            return Err(bad("chardev=ID is required".into()));
        }
        let Some(c) = chardevs.iter().find(|c| c.id == id) else {
            return Err(invalid(
                "-mon",
                format!("chardev={id}: no -chardev with that id"),
            ));
        };
        if let Backend::Server(path) = &c.backend {
            // QEMU's default mode is readline (HMP), which shmvm has not.
            if mode.as_deref() != Some("control") {
                return Err(bad(format!(
                    "mode={} is not supported on a socket (mode=control: QMP)",
                    mode.as_deref().unwrap_or("readline")
                )));
            }
            if pretty == Some(true) {
                return Err(bad("pretty=on is not supported".into()));
            }
            listened.push(c.id.as_str());
            monitors.push(MonitorConfig { path: path.clone() });
            continue;
        }
        let muxed = matches!(c.backend, Backend::Stdio(StdioOptions { mux: true, .. }));
        if console_chardev.as_deref() == Some(c.id.as_str()) && !muxed {
            return Err(invalid(
                "-mon",
                format!("chardev={id} is the console without mux=on"),
            ));
        }
        log::info!("-mon chardev={id}: shmvm has no monitor (C-a c says so); accepted");
    }
    // The listening sockets no -mon took: virtio-serial ports' (checked
    // by check_serial, which refuses one nothing uses).
    let listeners = chardevs
        .iter()
        .filter(|c| matches!(c.backend, Backend::Server(_)) && !listened.contains(&c.id.as_str()))
        .map(|c| c.id.clone())
        .collect();
    for (i, m) in monitors.iter().enumerate() {
        if monitors[..i].iter().any(|o| o.path == m.path) {
            return Err(invalid(
                "-qmp",
                format!("'{}': socket path used twice", m.path.display()),
            ));
        }
    }
    let sockets = chardevs
        .iter()
        .filter_map(|c| match &c.backend {
            Backend::Socket(path) => Some(ChardevConfig {
                id: c.id.clone(),
                path: path.clone(),
            }),
            _ => None,
        })
        .collect();
    Ok(SerialSetup {
        mode,
        stdio,
        sockets,
        monitors,
        listeners,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn setup(serial: &[&str], chardev: &[&str], mon: &[&str]) -> Result<SerialSetup, String> {
        resolve_serial(&s(serial), &s(chardev), &s(mon), &[], false).map_err(|e| e.to_string())
    }

    #[test]
    fn serial_spellings() {
        let r = setup(&[], &[], &[]).unwrap();
        assert_eq!((r.mode, r.stdio.mux), (SerialMode::Stdio, false));
        let r = resolve_serial(&[], &[], &[], &[], true).unwrap();
        assert_eq!((r.mode, r.stdio.mux), (SerialMode::Stdio, true));
        let r = setup(&["mon:stdio"], &[], &[]).unwrap();
        assert!(r.stdio.mux);
        assert_eq!(setup(&["none"], &[], &[]).unwrap().mode, SerialMode::None);
        assert_eq!(
            setup(&["file:/tmp/x"], &[], &[]).unwrap().mode,
            SerialMode::File("/tmp/x".into())
        );
        let r = setup(
            &["chardev:con"],
            &["stdio,id=con,mux=on,signal=off"],
            &["chardev=con"],
        )
        .unwrap();
        assert_eq!(
            (r.mode, r.stdio),
            (
                SerialMode::Stdio,
                StdioOptions {
                    mux: true,
                    signal: false
                }
            )
        );
        let r = setup(&["chardev:f", "none"], &["file,id=f,path=/tmp/l"], &[]).unwrap();
        assert_eq!(r.mode, SerialMode::File("/tmp/l".into()));
        let r = setup(&[], &["socket,id=c,path=/s,server=off"], &[]).unwrap();
        assert_eq!(r.sockets[0].path, PathBuf::from("/s"));
    }

    #[test]
    fn errors_name_the_option() {
        for (serial, chardev, mon, want) in [
            (
                vec!["pty"],
                vec![],
                vec![],
                "-serial: 'pty' is not supported",
            ),
            (
                vec!["stdio", "file:/x"],
                vec![],
                vec![],
                "-serial: 'file:/x': shmvm has one serial port",
            ),
            (
                vec!["chardev:x"],
                vec![],
                vec![],
                "-serial: 'chardev:x': no -chardev",
            ),
            (
                vec![],
                vec!["stdio"],
                vec![],
                "-chardev: 'stdio': id= is required",
            ),
            (
                vec![],
                vec!["pty,id=p"],
                vec![],
                "-chardev: 'pty,id=p': backend 'pty'",
            ),
            (
                vec![],
                vec!["socket,id=c"],
                vec![],
                "-chardev: 'socket,id=c': path= is required",
            ),
            (
                vec![],
                vec!["socket,id=c,path=/x,server=on"],
                vec![],
                "-chardev: 'socket,id=c,path=/x,server=on': wait=on is not supported",
            ),
            (
                vec![],
                vec!["socket,id=x,path=/a,server=on,wait=off"],
                vec!["chardev=x,mode=readline"],
                "-mon: 'chardev=x,mode=readline': mode=readline is not supported",
            ),
            (
                vec![],
                vec!["socket,id=x,path=/a,server,nowait"],
                vec!["chardev=x"],
                "-mon: 'chardev=x': mode=readline is not supported",
            ),
            (
                vec![],
                vec![],
                vec!["mode=control"],
                "-mon: 'mode=control': chardev=ID is required",
            ),
            (
                vec![],
                vec!["null,id=a", "null,id=a"],
                vec![],
                "-chardev: duplicate id 'a'",
            ),
            (
                vec!["chardev:c"],
                vec!["stdio,id=c"],
                vec!["chardev=c"],
                "-mon: chardev=c is the console without mux=on",
            ),
            (vec![], vec![], vec!["chardev=z"], "-mon: chardev=z"),
        ] {
            let e = setup(&serial, &chardev, &mon).unwrap_err();
            assert!(e.starts_with(want), "{e:?} does not start with {want:?}");
        }
    }

    fn monitors(qmp: &[&str], chardev: &[&str], mon: &[&str]) -> Result<Vec<String>, String> {
        let r =
            resolve_serial(&[], &s(chardev), &s(mon), &s(qmp), false).map_err(|e| e.to_string())?;
        Ok(r.monitors
            .iter()
            .map(|m| m.path.display().to_string())
            .collect())
    }

    #[test]
    fn qmp_spellings() {
        for spec in [
            "unix:/tmp/a.sock,server=on,wait=off",
            "unix:/tmp/a.sock,server,nowait",
            "unix:/tmp/a.sock,server=yes,wait=no",
        ] {
            assert_eq!(monitors(&[spec], &[], &[]).unwrap(), ["/tmp/a.sock"]);
        }
        assert_eq!(
            monitors(&["unix:/tmp/a,,b,server,nowait"], &[], &[]).unwrap(),
            ["/tmp/a,b"]
        );
        for (spec, why) in [
            ("tcp:localhost:4444,server=on,wait=off", "unix:PATH"),
            ("unix:/tmp/a,server=on", "wait=on"),
            ("unix:/tmp/a,wait=off", "server=on"),
            ("unix:,server=on,wait=off", "empty"),
            (
                "unix:/a,server=on,wait=off,bogus=1",
                "unknown property 'bogus'",
            ),
            ("unix:/a,server=maybe,wait=off", "on or off"),
        ] {
            let e = monitors(&[spec], &[], &[]).unwrap_err();
            assert!(
                e.starts_with(&format!("-qmp: '{spec}': ")) && e.contains(why),
                "{spec}: {e}"
            );
        }
    }

    #[test]
    fn mon_on_a_listening_socket_is_qmp() {
        let r = resolve_serial(
            &[],
            &s(&[
                "socket,id=m0,path=/q2,server=on,wait=off",
                "socket,id=vu,path=/vhost.sock",
                "stdio,id=con,mux=on",
            ]),
            &s(&["chardev=m0,mode=control", "chardev=con"]),
            &s(&["unix:/q1,server,nowait"]),
            false,
        )
        .unwrap();
        let paths: Vec<_> = r.monitors.iter().map(|m| m.path.clone()).collect();
        assert_eq!(paths, [PathBuf::from("/q1"), PathBuf::from("/q2")]);
        let sockets: Vec<_> = r.sockets.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(sockets, ["vu"]);
        let e = monitors(
            &["unix:/a,server,nowait"],
            &["socket,id=m,path=/a,server=on,wait=off"],
            &["chardev=m,mode=control"],
        )
        .unwrap_err();
        assert_eq!(e, "-qmp: '/a': socket path used twice");
    }
}
