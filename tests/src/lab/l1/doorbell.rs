//! The doorbell scenario (`extra` doorbell): one run of three L2 guests,
//! two under shmvm and one under QEMU (microvm with PCIe), each with
//! `-device ivshmem-doorbell` on an `ivshmem-server` this runner starts in
//! L1. The guests are started in peer-id order (each once the server has
//! seen the previous one connect), so guest N is peer N. Each L2 init
//! (guest/initramfs/init, `lab.doorbell=3`) loads ivshmem_db, marks itself
//! ready in the region, waits for the others and passes a token
//! 0 -> 1 -> 2 -> 0; it reports `LAB-RESULT stage=doorbell id=N result=ok`.
//! The run passes when every guest reports ok with its own id, reached its
//! init with the token the command line carried and its VMM exited with 0.
//!
//! [`run_peers`] and [`Session::judge`] are the lab-independent core: the
//! arm64 lab runs its two-shmvm doorbell scenario through them
//! (`lab/arm64.rs`), its L2 init sourcing the same guest side
//! (guest/initramfs/doorbell.sh).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    BOOT_TIMEOUT, Console, EXIT_TIMEOUT, Judgement, Outcome, RUN_TIMEOUT, Runner, SERVER, Verdict,
    exit_code, fields, last_words, random, result, secs,
};
use crate::lab::scenario::{Scenario, Vmm};

/// The peers in id order.
const PEERS: [Vmm; 3] = [Vmm::Shmvm, Vmm::Shmvm, Vmm::Qemu];
/// The server's shared memory object and size.
const SHM_NAME: &str = "lab-db";
const SHM_SIZE: &str = "1M";

/// One L2 guest of the run.
struct Peer {
    vmm: Vmm,
    console: Console,
    started: Instant,
    child: Option<Child>,
    rc: Option<i32>,
    t_init: Option<Duration>,
    t_done: Option<Duration>,
}

/// Waits until `ok` holds, the child (if any) exits, or `limit` passes.
pub(super) fn wait_for(
    limit: Duration,
    child: Option<&mut Child>,
    mut ok: impl FnMut() -> bool,
) -> bool {
    let start = Instant::now();
    let mut child = child;
    while start.elapsed() < limit {
        if ok() {
            return true;
        }
        if let Some(c) = child.as_mut()
            && !matches!(c.try_wait(), Ok(None))
        {
            return ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ok()
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) with SIGTERM on our own, not yet reaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    if !wait_for(Duration::from_secs(5), None, || {
        matches!(child.try_wait(), Ok(Some(_)))
    }) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// What a doorbell run left: its peers, the first thing that went wrong
/// (if any), its length and the server's log.
pub(crate) struct Session {
    peers: Vec<Peer>,
    why: Option<String>,
    end: Duration,
    server_log: String,
}

impl Session {
    /// Every peer's exit status: the first one that is not 0, else 0.
    pub(crate) fn rc(&self) -> i32 {
        self.peers
            .iter()
            .map(|p| p.rc.unwrap_or(-1))
            .find(|&rc| rc != 0)
            .unwrap_or(0)
    }

    /// The verdict on the run (each peer booted with `token`, reported
    /// `result=ok` under its own id of `want` peers and exited with 0) and
    /// every console, the server's last. Each peer's console file is
    /// removed: its text is in the returned one.
    pub(crate) fn judge(self, token: &str, want: usize) -> (Judgement, String) {
        let mut j = Judgement::default();
        let mut console = String::new();
        judge(&self.peers, token, want, &mut j, &mut console);
        if let Some(w) = self.why {
            j.fails.insert(0, w);
        }
        console += &format!("--- ivshmem-server\n{}", self.server_log);
        let vmms: Vec<String> = self.peers.iter().map(|p| p.vmm.to_string()).collect();
        j.report.push(("peers", vmms.join(",")));
        for (id, p) in self.peers.iter().enumerate() {
            let _ = fs::remove_file(&p.console.path);
            if let Some(t) = p.t_init {
                j.report
                    .push((["init0_s", "init1_s", "init2_s"][id % 3], secs(t)));
            }
        }
        (j, console)
    }
}

/// Runs one guest per entry of `vmms` on one `ivshmem-server` this starts
/// (in L1, for the x86 and the arm64 lab alike): guest N is started once
/// guest N-1 connected, so it is peer N; `command(id, vmm)` is its VMM's
/// command line. Returns when every VMM ended (or was killed on a timeout).
pub(crate) fn run_peers(
    s: &Scenario,
    tag: &str,
    vmms: &[Vmm],
    command: impl Fn(usize, Vmm) -> Vec<String>,
) -> Session {
    let _ = fs::create_dir_all("/tmp/lab");
    let sock = PathBuf::from(format!("/tmp/lab/{tag}.sock"));
    let server_log = Console {
        path: PathBuf::from(format!("/tmp/lab/{tag}.server.log")),
    };
    let _ = fs::remove_file(&sock);
    let _ = File::create(&server_log.path);
    let start = Instant::now();
    let mut why: Option<String> = None;
    let sock_s = sock.display().to_string();
    let server = Command::new(SERVER)
        .args(["-F", "-v", "-S", &sock_s, "-M", SHM_NAME, "-l", SHM_SIZE])
        .args(["-n", "1"])
        .stdin(Stdio::null())
        .stdout(server_log.sink())
        .stderr(server_log.sink())
        .spawn();
    let mut server = match server {
        Ok(c) => Some(c),
        Err(e) => {
            why = Some(format!("{SERVER} did not start: {e}"));
            None
        }
    };
    if let Some(c) = server.as_mut()
        && !wait_for(Duration::from_secs(10), Some(c), || sock.exists())
    {
        why = Some(format!("{SERVER} did not create {sock_s}"));
    }

    let mut peers: Vec<Peer> = Vec::new();
    for (id, &pvmm) in vmms.iter().enumerate() {
        if why.is_some() {
            break;
        }
        let console = Console {
            path: PathBuf::from(format!("/tmp/lab/{tag}.peer{id}.log")),
        };
        let _ = File::create(&console.path);
        let cmd = command(id, pvmm);
        let started = Instant::now();
        let child = console.start_vmm(&s.name, &format!("peer={id} vmm={pvmm}"), &cmd);
        let mut peer = Peer {
            vmm: pvmm,
            console,
            started,
            child: None,
            rc: None,
            t_init: None,
            t_done: None,
        };
        match child {
            Ok(mut c) => {
                let joined = format!("peer {id} connected");
                if !wait_for(BOOT_TIMEOUT, Some(&mut c), || {
                    server_log.text().contains(&joined)
                }) {
                    why = Some(format!("peer {id} ({pvmm}) never connected to the server"));
                }
                peer.child = Some(c);
            }
            Err(e) => why = Some(format!("peer {id}: {} did not start: {e}", cmd[0])),
        }
        peers.push(peer);
    }

    // Every guest runs until it powers off; the runner watches them all.
    loop {
        let t = start.elapsed();
        let mut running = 0;
        for p in peers.iter_mut() {
            let text = p.console.text();
            if p.t_init.is_none() && result(&text, "init").is_some() {
                p.t_init = Some(p.started.elapsed());
            }
            if p.t_done.is_none() && result(&text, "done").is_some() {
                p.t_done = Some(t);
            }
            if let Some(c) = p.child.as_mut() {
                match c.try_wait() {
                    Ok(Some(st)) => p.rc = Some(exit_code(st)),
                    Ok(None) => running += 1,
                    Err(_) => p.rc = Some(-1),
                }
                if p.rc.is_some() {
                    p.child = None;
                }
            }
        }
        if running == 0 {
            break;
        }
        if why.is_none() {
            if let Some((id, _)) = peers
                .iter()
                .enumerate()
                .find(|(_, p)| p.t_done.is_some_and(|d| t - d > EXIT_TIMEOUT) && p.rc.is_none())
            {
                why = Some(format!(
                    "peer {id} VMM still running {}s after the guest's {}",
                    EXIT_TIMEOUT.as_secs(),
                    s.action
                ));
            } else if t > RUN_TIMEOUT {
                why = Some(format!("run exceeded {}s", RUN_TIMEOUT.as_secs()));
            }
        }
        if why.is_some() {
            for p in peers.iter_mut() {
                if let Some(mut c) = p.child.take() {
                    let _ = c.kill();
                    p.rc = c.wait().ok().map(exit_code);
                }
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let end = start.elapsed();
    if let Some(mut c) = server.take() {
        stop(&mut c);
    }
    let _ = fs::remove_file(&sock);
    let _ = fs::remove_file(Path::new("/dev/shm").join(SHM_NAME));
    let log = server_log.text();
    let _ = fs::remove_file(&server_log.path);
    Session {
        peers,
        why,
        end,
        server_log: log,
    }
}

/// The socket `run_peers` serves for a run tagged `tag`.
pub(crate) fn socket(tag: &str) -> String {
    format!("/tmp/lab/{tag}.sock")
}

pub(super) fn run(runner: &mut Runner, s: &Scenario, vmm: Vmm, tag: &str) -> Verdict {
    let token = format!("t{}-{}", random(), s.name);
    let sock = socket(tag);
    let session = run_peers(s, tag, &PEERS, |_, pvmm| {
        command(runner, s, pvmm, &sock, &token)
    });
    // Three guests boot at once: their boot times (each from its own VMM's
    // start, initN_s) are not the lab's single-guest boot median (init_s=-).
    let out = Outcome {
        rc: session.rc(),
        why: None,
        t_init: None,
        t_kill: None,
        end: session.end,
        qmp: None,
    };
    let (j, console) = session.judge(&token, PEERS.len());
    runner.report(s, vmm, tag, &out, &j, &console)
}

/// A peer's VMM command line.
fn command(runner: &Runner, s: &Scenario, vmm: Vmm, sock: &str, token: &str) -> Vec<String> {
    let mut append = runner.l2_append(s, vmm, token);
    append += &format!(" lab.doorbell={}", PEERS.len());
    let mut args: Vec<String> = vec![
        "-object".into(),
        format!("memory-backend-ram,id=mem,size={}", s.mem.text),
        "-machine".into(),
        "memory-backend=mem".into(),
        "-smp".into(),
        s.smp.to_string(),
    ];
    args.extend(device_args(sock));
    Runner::command(s, vmm, args, append)
}

/// The ivshmem-doorbell device on the server at `sock` (QEMU's spelling,
/// the same for every VMM and architecture).
pub(crate) fn device_args(sock: &str) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,path={sock},id=iv"),
        "-device".into(),
        "ivshmem-doorbell,chardev=iv".into(),
    ]
}

/// Every peer must have booted with the token, reported `result=ok` under
/// its own id and exited with 0.
fn judge(peers: &[Peer], token: &str, want: usize, j: &mut Judgement, console: &mut String) {
    if peers.len() < want {
        j.fails
            .push(format!("{} of {want} peers started", peers.len()));
    }
    for (id, p) in peers.iter().enumerate() {
        let text = p.console.text();
        let who = format!("peer {id} ({})", p.vmm);
        match result(&text, "init").map(fields) {
            None => j.fails.push(format!("{who}: L2 never reached its init")),
            Some(f) if f.get("token") != Some(&token) => {
                j.fails.push(format!("{who}: command line token mangled"))
            }
            Some(_) => {}
        }
        match result(&text, "doorbell").map(fields) {
            None => j.fails.push(format!("{who}: no doorbell result")),
            Some(f) => {
                let got_id = f.get("id").copied().unwrap_or("-");
                let res = f.get("result").copied().unwrap_or("-");
                if res != "ok" {
                    let why = f.get("why").copied().unwrap_or("-");
                    j.fails
                        .push(format!("{who}: doorbell result={res} why={why}"));
                } else if got_id != id.to_string() {
                    j.fails
                        .push(format!("{who}: the guest is peer {got_id}, want {id}"));
                }
            }
        }
        // QEMU 10 (the reference peer) has been seen to abort in its own
        // exit path ("double free or corruption") after its guest powered
        // off: tolerated, loudly, when the guest finished; never for shmvm.
        let guest_done = result(&text, "done").is_some();
        match p.rc {
            Some(0) => {}
            Some(134) if p.vmm == Vmm::Qemu && guest_done => {
                let warn = format!(
                    "lab: WARNING {who}: QEMU aborted (status 134) after its guest powered off; \
                     counted as the reference peer's own exit bug"
                );
                eprintln!("{warn}");
                j.report.push(("qemu_exit_abort", "1".into()));
                *console += &format!("{warn}\n");
            }
            Some(rc) => j.fails.push(format!(
                "{who}: VMM exit status {rc}: {}",
                last_words(&text)
            )),
            None => j.fails.push(format!("{who}: VMM exit status unknown")),
        }
        *console += &format!("--- peer {id} ({})\n{text}\n", p.vmm);
    }
}
