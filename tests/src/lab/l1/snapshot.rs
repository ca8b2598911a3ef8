//! The snapshot scenario (`extra` snapshot, shmvm only; docs/SNAPSHOT.md).
//! A stock Linux L2 boots with its RAM in a named shm object (`keep=on`)
//! and its init (`lab.snapshot=1`) reports `stage=snapshot-ready`, then
//! waits for one line on its console. This runner stops the VMM and saves
//! it over QMP (`stop`, `x-shmvm-snapshot-save`), kills it (SIGKILL: the
//! snapshot must not need the saving process), then restores the snapshot
//! 5 times at once with `--restore-ram=clone` and, once they are gone, once
//! with `--restore-ram=shared` (it writes the shm object: it runs last).
//! Each restored VMM gets its own token on its console (stdin) once it
//! logs its first KVM_RUN (`-v`); its guest answers with the token, its
//! uptime on waking and after a `sleep 1` (`stage=snapshot-answer`), and
//! powers off.
//!
//! The run passes when the save referenced the RAM (nothing written), the
//! snapshot directory holds only its state file, and every restored guest
//! answered its own token without booting again, with time moving on (its
//! uptime on waking not before the saved one, a `sleep 1` that ended) and
//! its VMM exited with 0.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::doorbell::wait_for;
use super::qmp::Qmp;
use super::{
    BOOT_TIMEOUT, Console, EXIT_TIMEOUT, Judgement, Outcome, Runner, Verdict, exit_code, fields,
    last_words, qmp_socket, random, result, secs,
};
use crate::lab::scenario::{Scenario, Vmm};

/// Clones restored at once.
const CLONES: usize = 5;
/// From a restore's start to its VMM's exit.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(90);
/// What shmvm `-v` logs just before a vCPU's first KVM_RUN.
const RUNNING: &str = "first KVM_RUN at";

/// One restored VMM.
struct Restored {
    name: String,
    console: Console,
    /// The line written on its console.
    line: String,
    token: String,
    started: Instant,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    sent: bool,
    rc: Option<i32>,
    /// The guest's answer arrived (from the VMM's start).
    t_answer: Option<Duration>,
    spawn_error: Option<String>,
}

/// The saving boot's facts.
#[derive(Default)]
struct Boot {
    t_init: Option<Duration>,
    /// The guest's `snapshot-ready` fields: uptime_s, date_s.
    ready: Option<(f64, u64)>,
    save: Option<Result<Value, String>>,
    rc: Option<i32>,
    why: Option<String>,
}

fn num<T: std::str::FromStr>(f: &std::collections::HashMap<&str, &str>, k: &str) -> Option<T> {
    f.get(k).and_then(|v| v.parse().ok())
}

pub(super) fn run(runner: &mut Runner, s: &Scenario, vmm: Vmm, tag: &str) -> Verdict {
    let start = Instant::now();
    let dir = PathBuf::from(format!("/tmp/lab/{tag}.snap"));
    let shm = format!("/lab-snap-{}", random());
    let sock = qmp_socket(tag);
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_file(&sock);
    let token = format!("t{}-{}", random(), s.name);
    let console = Console {
        path: PathBuf::from(format!("/tmp/lab/{tag}.log")),
    };
    let _ = File::create(&console.path);

    let boot = boot_and_save(runner, s, vmm, &token, &shm, &sock, &dir, &console);
    let mut restored: Vec<Restored> = Vec::new();
    if boot.why.is_none() {
        let clones: Vec<Restored> = (0..CLONES)
            .map(|i| restore(tag, &format!("clone{i}"), "clone", &dir))
            .collect();
        restored.extend(supervise(clones));
        restored.extend(supervise(vec![restore(tag, "shared", "shared", &dir)]));
    }
    let end = start.elapsed();

    let mut j = Judgement::default();
    let mut text = format!("--- boot (saved, then killed)\n{}\n", console.text());
    judge_boot(&boot, &token, &dir, &text, &mut j);
    for r in &restored {
        let t = r.console.text();
        judge_restored(r, &t, boot.ready, &mut j);
        text += &format!("--- {} ({})\n{t}\n", r.name, r.line.trim_end());
        let _ = fs::remove_file(&r.console.path);
    }
    if let Some(w) = &boot.why {
        j.fails.insert(0, w.clone());
    }
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_file(&sock);
    let _ = fs::remove_file(Path::new("/dev/shm").join(shm.trim_start_matches('/')));
    let _ = fs::remove_file(&console.path);
    let rc = restored
        .iter()
        .map(|r| r.rc.unwrap_or(-1))
        .find(|&rc| rc != 0)
        .unwrap_or(0);
    let out = Outcome {
        rc,
        why: None,
        t_init: boot.t_init,
        t_kill: None,
        end,
        qmp: None,
    };
    runner.report(s, vmm, tag, &out, &j, &text)
}

/// Boots the guest, saves it once it waits on its console, kills the VMM.
#[allow(clippy::too_many_arguments)]
fn boot_and_save(
    runner: &Runner,
    s: &Scenario,
    vmm: Vmm,
    token: &str,
    shm: &str,
    sock: &Path,
    dir: &Path,
    console: &Console,
) -> Boot {
    let mut b = Boot::default();
    let append = runner.l2_append(s, vmm, token) + " lab.snapshot=1";
    let args: Vec<String> = vec![
        "-object".into(),
        format!(
            "memory-backend-shm,id=mem,size={},name={shm},keep=on",
            s.mem.text
        ),
        "-machine".into(),
        "memory-backend=mem".into(),
        "-smp".into(),
        s.smp.to_string(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ];
    let cmd = Runner::command(s, vmm, args, append);
    let started = Instant::now();
    let child = console.start_vmm(&s.name, &format!("vmm={vmm}"), &cmd);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            b.why = Some(format!("{} did not start: {e}", cmd[0]));
            return b;
        }
    };
    let ready = wait_for(BOOT_TIMEOUT, Some(&mut child), || {
        let text = console.text();
        if b.t_init.is_none() && result(&text, "init").is_some() {
            b.t_init = Some(started.elapsed());
        }
        result(&text, "snapshot-ready").is_some()
    });
    if ready {
        let f = console.text();
        b.ready = result(&f, "snapshot-ready")
            .map(fields)
            .and_then(|f| Some((num(&f, "uptime_s")?, num(&f, "date_s")?)));
        b.save = Some(save(sock, dir));
    } else {
        b.why = Some(format!(
            "the guest never reported snapshot-ready within {}s",
            BOOT_TIMEOUT.as_secs()
        ));
    }
    // The saved VMM is killed, not asked to quit: a restore must not need it.
    let _ = child.kill();
    b.rc = child.wait().ok().map(exit_code);
    if b.why.is_none()
        && let Some(Err(e)) = &b.save
    {
        b.why = Some(format!("save failed: {e}"));
    }
    b
}

/// `stop`, then `x-shmvm-snapshot-save` into `dir`; its reply.
fn save(sock: &Path, dir: &Path) -> Result<Value, String> {
    let mut q = Qmp::connect(sock).map_err(|e| e.to_string())?;
    q.execute("stop").map_err(|e| e.to_string())?;
    q.wait_event("STOP").map_err(|e| e.to_string())?;
    q.execute_with(
        "x-shmvm-snapshot-save",
        json!({ "path": dir.display().to_string() }),
    )
    .map_err(|e| e.to_string())
}

/// Starts one restore of `dir` (`mode`: clone | shared).
fn restore(tag: &str, name: &str, mode: &str, dir: &Path) -> Restored {
    let console = Console {
        path: PathBuf::from(format!("/tmp/lab/{tag}.{name}.log")),
    };
    let _ = File::create(&console.path);
    let token = format!("r{}-{name}", random());
    let cmd: Vec<String> = vec![
        "shmvm".into(),
        "--restore".into(),
        dir.display().to_string(),
        format!("--restore-ram={mode}"),
        "--serial".into(),
        "stdio".into(),
        "-v".into(),
    ];
    console.append(&format!("LAB-RUN restore={name} cmd={}", cmd.join(" ")));
    let child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(console.sink())
        .stderr(console.sink())
        .spawn();
    let mut r = Restored {
        name: name.to_string(),
        console,
        line: format!("snap {token}\n"),
        token,
        started: Instant::now(),
        child: None,
        stdin: None,
        sent: false,
        rc: None,
        t_answer: None,
        spawn_error: None,
    };
    match child {
        Ok(mut c) => {
            r.stdin = c.stdin.take();
            r.child = Some(c);
        }
        Err(e) => r.spawn_error = Some(format!("shmvm did not start: {e}")),
    }
    r
}

/// Runs restored VMMs until all have exited: each gets its line once it
/// runs; one still running after [`RESTORE_TIMEOUT`] (or [`EXIT_TIMEOUT`]
/// after its answer) is killed.
fn supervise(mut rs: Vec<Restored>) -> Vec<Restored> {
    loop {
        let mut running = 0;
        for r in rs.iter_mut() {
            let Some(c) = r.child.as_mut() else { continue };
            let t = r.started.elapsed();
            let text = r.console.text();
            // Written once the vCPU runs (restored serial state would not
            // clobber it earlier, but the guest's read is what is tested);
            // stdin stays open until the VMM exits: EOF is no part of it.
            if !r.sent
                && text.contains(RUNNING)
                && let Some(w) = r.stdin.as_mut()
            {
                r.sent = true;
                if let Err(e) = w.write_all(r.line.as_bytes()) {
                    r.console.append(&format!("LAB-L1 console write: {e}"));
                }
            }
            if r.t_answer.is_none() && result(&text, "snapshot-answer").is_some() {
                r.t_answer = Some(t);
            }
            match c.try_wait() {
                Ok(Some(st)) => r.rc = Some(exit_code(st)),
                Ok(None) => running += 1,
                Err(_) => r.rc = Some(-1),
            }
            let late = r
                .t_answer
                .map_or(t > RESTORE_TIMEOUT, |a| t.saturating_sub(a) > EXIT_TIMEOUT);
            if r.rc.is_none() && late {
                r.console.append(&format!(
                    "LAB-L1 killed the VMM: still running after {}s",
                    secs(t)
                ));
                let _ = c.kill();
                r.rc = c.wait().ok().map(exit_code).or(Some(-1));
                running -= 1;
            }
            if r.rc.is_some() {
                r.child = None;
                r.stdin = None;
            }
        }
        if running == 0 {
            return rs;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn judge_boot(b: &Boot, token: &str, dir: &Path, console: &str, j: &mut Judgement) {
    match result(console, "init").map(fields) {
        None => j.fails.push("L2 never reached its init".into()),
        Some(f) if f.get("token") != Some(&token) => {
            j.fails.push("command line token mangled".into())
        }
        Some(_) => {}
    }
    if b.why.is_some() {
        return;
    }
    if b.ready.is_none() {
        j.fails
            .push("snapshot-ready without uptime_s and date_s".into());
    }
    // Killed by the runner (SIGKILL, 128 + 9): it must not have ended on its own.
    if b.rc != Some(137) {
        j.fails.push(format!(
            "the saved VMM ended by itself (status {:?}) before it was killed: {}",
            b.rc,
            last_words(console)
        ));
    }
    if let Some(Ok(v)) = &b.save {
        let get = |k: &str| v.get(k).and_then(Value::as_f64);
        if get("memory-referenced") != Some(1.0) || get("memory-written") != Some(0.0) {
            j.fails
                .push(format!("save: want the RAM referenced, not written: {v}"));
        }
        for (k, key) in [("save_ms", "total-ms"), ("save_state_ms", "state-ms")] {
            j.report
                .push((k, get(key).map_or("-".into(), |ms| format!("{ms:.2}"))));
        }
    }
    let files: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if files != ["state"] {
        j.fails.push(format!(
            "the snapshot directory holds {files:?}, want only the state file"
        ));
    }
}

/// A restored guest answered its own token, without booting again, with
/// time moving on; its VMM exited with 0.
fn judge_restored(r: &Restored, text: &str, ready: Option<(f64, u64)>, j: &mut Judgement) {
    let who = &r.name;
    if let Some(e) = &r.spawn_error {
        j.fails.push(format!("{who}: {e}"));
        return;
    }
    if !text.contains(RUNNING) {
        j.fails
            .push(format!("{who}: never ran: {}", last_words(text)));
    }
    if result(text, "init").is_some() {
        j.fails
            .push(format!("{who}: the guest booted again instead of going on"));
    }
    match result(text, "snapshot-answer").map(fields) {
        None => j
            .fails
            .push(format!("{who}: no answer to its console line")),
        Some(f) => {
            if f.get("token") != Some(&r.token.as_str()) {
                j.fails.push(format!(
                    "{who}: answered token {}, want {}",
                    f.get("token").unwrap_or(&"-"),
                    r.token
                ));
            }
            let up: Option<f64> = num(&f, "uptime_s");
            let slept: Option<f64> = num(&f, "after_sleep_s");
            let date: Option<u64> = num(&f, "date_s");
            match (ready, up, slept, date) {
                (Some((u_saved, d_saved)), Some(u), Some(u2), Some(d)) => {
                    if u < u_saved {
                        j.fails.push(format!(
                            "{who}: uptime went back: {u} s on waking, {u_saved} s when saved"
                        ));
                    }
                    if d < d_saved {
                        j.fails.push(format!(
                            "{who}: date went back: {d} on waking, {d_saved} when saved"
                        ));
                    }
                    if u2 - u < 1.0 {
                        j.fails.push(format!(
                            "{who}: sleep 1 took {:.2} s of guest uptime",
                            u2 - u
                        ));
                    }
                    if who == "shared" {
                        j.report
                            .push(("wake_uptime_gap_s", format!("{:.2}", u - u_saved)));
                    }
                }
                _ => j.fails.push(format!(
                    "{who}: answer without uptime_s, after_sleep_s and date_s"
                )),
            }
        }
    }
    if result(text, "done").is_none() {
        j.fails.push(format!("{who}: the guest never powered off"));
    }
    match r.rc {
        Some(0) => {}
        Some(rc) => j
            .fails
            .push(format!("{who}: VMM exit status {rc}: {}", last_words(text))),
        None => j.fails.push(format!("{who}: VMM exit status unknown")),
    }
    let first_run_ms = text
        .lines()
        .find_map(|l| l.split(RUNNING).nth(1))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("-")
        .to_string();
    let key = match who.as_str() {
        "shared" => "shared_first_run_ms",
        "clone0" => "clone0_first_run_ms",
        _ => return,
    };
    j.report.push((key, first_run_ms));
    if let Some(t) = r.t_answer {
        let key = if who == "shared" {
            "shared_answer_s"
        } else {
            "clone0_answer_s"
        };
        j.report.push((key, secs(t)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restored(name: &str, token: &str, rc: i32) -> Restored {
        Restored {
            name: name.into(),
            console: Console {
                path: PathBuf::from("/nonexistent"),
            },
            line: format!("snap {token}\n"),
            token: token.into(),
            started: Instant::now(),
            child: None,
            stdin: None,
            sent: true,
            rc: Some(rc),
            t_answer: Some(Duration::from_secs(2)),
            spawn_error: None,
        }
    }

    fn console(token: &str, up: &str, slept: &str, date: &str) -> String {
        format!(
            "shmvm: startup: first KVM_RUN at 3.5 ms\nsnap {token}\n\
             LAB-RESULT name=s stage=snapshot-answer verb=snap token={token} uptime_s={up} \
             date_s={date} after_sleep_s={slept}\nLAB-RESULT name=s stage=done action=poweroff\n"
        )
    }

    fn fails(r: &Restored, text: &str) -> Vec<String> {
        let mut j = Judgement::default();
        judge_restored(r, text, Some((14.0, 1000)), &mut j);
        j.fails
    }

    #[test]
    fn a_restored_guest_that_went_on_passes() {
        let r = restored("shared", "r1", 0);
        assert_eq!(
            fails(&r, &console("r1", "14.5", "15.6", "1001")),
            [] as [&str; 0]
        );
        let mut j = Judgement::default();
        judge_restored(
            &r,
            &console("r1", "14.5", "15.6", "1001"),
            Some((14.0, 1000)),
            &mut j,
        );
        assert!(j.report.contains(&("shared_first_run_ms", "3.5".into())));
    }

    #[test]
    fn each_broken_promise_is_one_reason() {
        let r = restored("clone3", "r1", 0);
        assert_eq!(
            fails(&r, &console("r2", "14.5", "15.6", "1001")),
            ["clone3: answered token r2, want r1"]
        );
        assert_eq!(
            fails(&r, &console("r1", "3.0", "4.1", "1001")),
            ["clone3: uptime went back: 3 s on waking, 14 s when saved"]
        );
        assert_eq!(
            fails(&r, &console("r1", "14.5", "14.9", "1001")),
            ["clone3: sleep 1 took 0.40 s of guest uptime"]
        );
        assert_eq!(
            fails(&r, &console("r1", "14.5", "15.6", "999")),
            ["clone3: date went back: 999 on waking, 1000 when saved"]
        );
        let booted = format!(
            "LAB-RESULT name=s stage=init token=x\n{}",
            console("r1", "14.5", "15.6", "1001")
        );
        assert_eq!(
            fails(&r, &booted),
            ["clone3: the guest booted again instead of going on"]
        );
        let hung = "shmvm: startup: first KVM_RUN at 3.5 ms\nsnap r1\n";
        assert_eq!(
            fails(&r, hung),
            [
                "clone3: no answer to its console line",
                "clone3: the guest never powered off"
            ]
        );
        let died = restored("clone3", "r1", 1);
        let f = fails(&died, &console("r1", "14.5", "15.6", "1001"));
        assert_eq!(f.len(), 1);
        assert!(f[0].starts_with("clone3: VMM exit status 1: "), "{f:?}");
    }
}
