//! Monitor options: `-qmp unix:PATH,server=on,wait=off` and
//! `-chardev socket,id=ID,path=PATH,server=on,wait=off` with
//! `-mon chardev=ID,mode=control`, into one [`MonitorConfig`] per socket.

use std::path::PathBuf;

/// Errors in the monitor options; each names its option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{option}: '{spec}': {reason}")]
    Invalid {
        option: &'static str,
        spec: String,
        reason: String,
    },
}

/// One QMP socket to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    pub path: PathBuf,
}

fn invalid(option: &'static str, spec: &str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        option,
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

/// QEMU's boolean spellings.
fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// The socket properties shared by `-qmp` and `-chardev socket`: `server`
/// must be on, `wait` off (the legacy bare `server` and `nowait` too).
/// Returns false for a key it does not know.
fn socket_prop(
    option: &'static str,
    spec: &str,
    kv: &str,
    server: &mut bool,
    wait: &mut bool,
) -> Result<bool, Error> {
    let (k, v) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    let flag = |v: Option<&str>| match v {
        None => Ok(true),
        Some(v) => {
            on_off(v).ok_or_else(|| invalid(option, spec, format!("{k}='{v}' is not on/off")))
        }
    };
    match k {
        "server" => *server = flag(v)?,
        "wait" => *wait = flag(v)?,
        "nowait" if v.is_none() => *wait = false,
        _ => return Ok(false),
    }
    Ok(true)
}

fn check_server(option: &'static str, spec: &str, server: bool, wait: bool) -> Result<(), Error> {
    if !server {
        return Err(invalid(
            option,
            spec,
            "only server=on is supported (shmvm listens)",
        ));
    }
    if wait {
        return Err(invalid(
            option,
            spec,
            "wait=on is not supported (add wait=off)",
        ));
    }
    Ok(())
}

/// `-qmp unix:PATH,server=on,wait=off`.
pub fn parse_qmp(spec: &str) -> Result<MonitorConfig, Error> {
    const OPT: &str = "-qmp";
    let rest = spec
        .strip_prefix("unix:")
        .ok_or_else(|| invalid(OPT, spec, "only unix:PATH sockets are supported"))?;
    let mut parts = rest.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(invalid(OPT, spec, "the socket path is empty"));
    }
    let (mut server, mut wait) = (false, true);
    for kv in parts {
        if !socket_prop(OPT, spec, kv, &mut server, &mut wait)? {
            return Err(invalid(
                OPT,
                spec,
                format!("unsupported property '{kv}' (server, wait)"),
            ));
        }
    }
    check_server(OPT, spec, server, wait)?;
    Ok(MonitorConfig {
        path: PathBuf::from(path),
    })
}

/// A `-chardev socket,...,server=on` that a `-mon` names.
#[derive(Debug)]
struct ServerChardev {
    id: String,
    path: PathBuf,
}

/// `-chardev socket,id=ID,path=PATH,server=on,wait=off`; None when it is
/// not a listening socket (a vhost-user back-end's chardev).
fn parse_server_chardev(spec: &str) -> Result<Option<ServerChardev>, Error> {
    const OPT: &str = "-chardev";
    let mut parts = spec.split(',');
    if parts.next() != Some("socket") {
        return Ok(None);
    }
    let (mut server, mut wait) = (false, true);
    let (mut id, mut path) = (None, None);
    for kv in parts {
        if socket_prop(OPT, spec, kv, &mut server, &mut wait)? {
            continue;
        }
        match kv.split_once('=') {
            Some(("id", v)) if !v.is_empty() => id = Some(v.to_string()),
            Some(("path", v)) if !v.is_empty() => path = Some(PathBuf::from(v)),
            _ => return Ok(None),
        }
    }
    if !server {
        return Ok(None);
    }
    check_server(OPT, spec, server, wait)?;
    match (id, path) {
        (Some(id), Some(path)) => Ok(Some(ServerChardev { id, path })),
        _ => Err(invalid(OPT, spec, "id= and path= are required")),
    }
}

/// `-mon chardev=ID,mode=control`: the chardev id.
fn parse_mon(spec: &str) -> Result<String, Error> {
    const OPT: &str = "-mon";
    let mut chardev = None;
    for kv in spec.split(',') {
        match kv.split_once('=') {
            Some(("chardev", v)) if !v.is_empty() => chardev = Some(v.to_string()),
            Some(("mode", "control")) => {}
            Some(("mode", m)) => {
                return Err(invalid(
                    OPT,
                    spec,
                    format!("mode={m} is not supported (mode=control)"),
                ));
            }
            Some(("pretty", v)) if on_off(v) == Some(false) => {}
            _ => {
                return Err(invalid(
                    OPT,
                    spec,
                    format!("unsupported property '{kv}' (chardev, mode)"),
                ));
            }
        }
    }
    chardev.ok_or_else(|| invalid(OPT, spec, "chardev=ID is required"))
}

/// What [`monitors`] leaves for the rest of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Monitors {
    /// Every QMP socket to listen on.
    pub sockets: Vec<MonitorConfig>,
    /// The `-chardev`s that are not monitor sockets.
    pub chardevs: Vec<String>,
    /// The `-mon`s on other chardevs (a mux stdio: accepted, no monitor).
    pub mon: Vec<String>,
}

/// Every monitor socket from `-qmp`, and from `-mon` on a listening
/// `-chardev socket,...,server=on`.
pub fn monitors(qmp: &[String], mon: &[String], chardevs: &[String]) -> Result<Monitors, Error> {
    let mut sockets = qmp
        .iter()
        .map(|q| parse_qmp(q))
        .collect::<Result<Vec<_>, _>>()?;
    let mut servers = Vec::new();
    let mut rest = Vec::new();
    for c in chardevs {
        match parse_server_chardev(c)? {
            Some(s) => servers.push((s, c)),
            None => rest.push(c.clone()),
        }
    }
    let mut other_mon = Vec::new();
    let mut used = vec![false; servers.len()];
    for m in mon {
        let id = parse_mon(m)?;
        match servers.iter().position(|(s, _)| s.id == id) {
            Some(i) => {
                used[i] = true;
                sockets.push(MonitorConfig {
                    path: servers[i].0.path.clone(),
                });
            }
            None => other_mon.push(m.clone()),
        }
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(invalid(
            "-chardev",
            servers[i].1,
            format!(
                "listening socket '{}' is not used by any -mon chardev=ID,mode=control",
                servers[i].0.id
            ),
        ));
    }
    for (i, m) in sockets.iter().enumerate() {
        if sockets[..i].iter().any(|o| o.path == m.path) {
            return Err(invalid(
                "-qmp",
                &m.path.display().to_string(),
                "socket path used twice",
            ));
        }
    }
    Ok(Monitors {
        sockets,
        chardevs: rest,
        mon: other_mon,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn qmp_spellings() {
        for spec in [
            "unix:/tmp/a.sock,server=on,wait=off",
            "unix:/tmp/a.sock,server,nowait",
            "unix:/tmp/a.sock,server=yes,wait=no",
        ] {
            assert_eq!(parse_qmp(spec).unwrap().path, PathBuf::from("/tmp/a.sock"));
        }
        for (spec, why) in [
            ("tcp:localhost:4444,server=on,wait=off", "unix:PATH"),
            ("unix:/tmp/a,server=on", "wait=on"),
            ("unix:/tmp/a,wait=off", "server=on"),
            ("unix:,server=on,wait=off", "empty"),
            ("unix:/a,server=on,wait=off,bogus=1", "unsupported"),
            ("unix:/a,server=maybe,wait=off", "on/off"),
        ] {
            let e = parse_qmp(spec).unwrap_err().to_string();
            assert!(e.starts_with("-qmp: ") && e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn mon_with_chardev() {
        let m = monitors(
            &s(&["unix:/q1,server,nowait"]),
            &s(&["chardev=m0,mode=control", "chardev=con"]),
            &s(&[
                "socket,id=m0,path=/q2,server=on,wait=off",
                "socket,id=vu,path=/vhost.sock",
                "stdio,id=con,mux=on",
            ]),
        )
        .unwrap();
        let paths: Vec<_> = m.sockets.iter().map(|c| c.path.to_str().unwrap()).collect();
        assert_eq!(paths, ["/q1", "/q2"]);
        assert_eq!(
            m.chardevs,
            s(&["socket,id=vu,path=/vhost.sock", "stdio,id=con,mux=on"])
        );
        assert_eq!(m.mon, s(&["chardev=con"]));
    }

    #[test]
    fn mon_errors_name_the_option() {
        // (-mon on a chardev that is not a listening socket is the config
        // layer's: resolve_serial.)
        let cases: &[(&[&str], &[&str], &str)] = &[
            (
                &["chardev=x,mode=readline"],
                &["socket,id=x,path=/a,server=on,wait=off"],
                "-mon",
            ),
            (&["mode=control"], &[], "-mon"),
            (&[], &["socket,id=x,path=/a,server=on,wait=off"], "-chardev"),
            (
                &["chardev=x"],
                &["socket,id=x,path=/a,server=on"],
                "-chardev",
            ),
        ];
        for (mon, chardev, opt) in cases {
            let e = monitors(&[], &s(mon), &s(chardev)).unwrap_err().to_string();
            assert!(
                e.starts_with(opt) && !e.contains('\n'),
                "{mon:?} {chardev:?}: {e}"
            );
        }
        let e = monitors(
            &s(&["unix:/a,server,nowait", "unix:/a,server,nowait"]),
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
