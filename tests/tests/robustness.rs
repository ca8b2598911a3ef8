//! Issue 19's hostile-user cases through the real binary: nothing hangs
//! (FIFOs, dangling links, sparse images, silent back-ends, a stalled
//! console reader), signals always win, and nothing is left behind on a
//! failure or a signal. Each case has a deadline far below what a hang
//! would take; the cases that run a guest need /dev/kvm (`kvm_` names).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmvm_tests::harness::{Run, TempDir, require_kvm, run, shmvm_bin, tiny_kernel, wait};

/// Every refusal here must come well before this (a hang would not).
const T: Duration = Duration::from_secs(20);

/// `jmp .`
const HANG: &[u8] = &[0xeb, 0xfe];
/// `mov dx, 0x3f8; mov al, 'x'; 1: out dx, al; jmp 1b` (32-bit code): an
/// endless stream of console output.
const FLOOD: &[u8] = &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'x', 0xee, 0xeb, 0xfd];

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// One line on stderr naming `what`, exit code 2, in well under [`T`].
fn refused(args: &[&str], what: &str) -> Run {
    let t0 = Instant::now();
    let r = run(args, T);
    assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
    assert!(r.stderr.contains(what), "{args:?}: {:?}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {:?}", r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(10), "{args:?}: slow");
    r
}

/// A top-level integer field of the `--stats=json` line.
fn json_u64(line: &str, key: &str) -> u64 {
    let at = line
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} missing: {line}"))
        + key.len()
        + 3;
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(shmvm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shmvm")
}

#[test]
fn dangling_symlink_mem_path_is_refused_at_once() {
    let d = TempDir::new("rb-link");
    let k = d.tiny_kernel(HANG);
    let link = d.0.join("ram");
    std::os::unix::fs::symlink(d.0.join("nowhere"), &link).unwrap();
    let obj = format!(
        "memory-backend-file,id=m,size=16M,mem-path={}",
        link.display()
    );
    refused(
        &[
            "-kernel",
            &k,
            "-object",
            &obj,
            "-machine",
            "memory-backend=m",
        ],
        "dangling symbolic link",
    );
    assert!(!d.0.join("nowhere").exists(), "created through the link");
}

#[test]
fn fifo_mem_path_is_refused_without_blocking() {
    let d = TempDir::new("rb-fifo");
    let k = d.tiny_kernel(HANG);
    let fifo = d.0.join("ram");
    mkfifo(&fifo);
    for extra in [",readonly=on", ""] {
        let obj = format!(
            "memory-backend-file,id=m,size=16M,mem-path={}{extra}",
            fifo.display()
        );
        refused(
            &[
                "-kernel",
                &k,
                "-object",
                &obj,
                "-machine",
                "memory-backend=m",
            ],
            "is a FIFO",
        );
    }
}

#[test]
fn fifo_kernel_and_initrd_are_refused_without_blocking() {
    let d = TempDir::new("rb-kfifo");
    let k = d.tiny_kernel(HANG);
    let fifo = d.0.join("fifo");
    mkfifo(&fifo);
    let f = fifo.to_str().unwrap();
    refused(&["-kernel", f], "is a FIFO");
    refused(&["-kernel", &k, "-initrd", f], "is a FIFO");
    refused(&["-kernel", d.0.to_str().unwrap()], "is a directory");
}

#[test]
fn elf_with_a_huge_sparse_note_is_refused_quickly() {
    let d = TempDir::new("rb-note");
    let mut img = tiny_kernel(HANG);
    // The second program header (the PT_NOTE) claims 1 GiB; the file is
    // made that long without writing it (sparse zeros).
    let note_ph = 64 + 56;
    img[note_ph + 32..note_ph + 40].copy_from_slice(&(1u64 << 30).to_le_bytes());
    img[note_ph + 40..note_ph + 48].copy_from_slice(&(1u64 << 30).to_le_bytes());
    let p = d.0.join("sparse.elf");
    std::fs::write(&p, &img).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len((1 << 30) + 4096).unwrap();
    drop(f);
    refused(
        &["-kernel", p.to_str().unwrap(), "-m", "16"],
        "note segment",
    );
}

/// A back-end that accepts the connection and never says a word.
fn silent_backend(d: &TempDir) -> (UnixListener, String) {
    let sock = d.0.join("silent.sock");
    let l = UnixListener::bind(&sock).unwrap();
    (l, sock.to_str().unwrap().to_string())
}

fn vhost_args<'a>(k: &'a str, chardev: &'a str) -> Vec<&'a str> {
    vec![
        "-kernel",
        k,
        "-object",
        "memory-backend-memfd,id=m,size=64M,share=on",
        "-machine",
        "memory-backend=m",
        "-chardev",
        chardev,
        "-device",
        "vhost-user-blk-pci,chardev=c0",
    ]
}

#[test]
fn silent_vhost_user_backend_hits_the_deadline() {
    let d = TempDir::new("rb-vh");
    let k = d.tiny_kernel(HANG);
    let (_l, sock) = silent_backend(&d);
    let chardev = format!("socket,id=c0,path={sock}");
    let t0 = Instant::now();
    let r = run(&vhost_args(&k, &chardev), T);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(r.stderr.contains("no answer"), "{:?}", r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
}

#[test]
fn sigterm_wins_over_a_silent_vhost_user_backend() {
    let d = TempDir::new("rb-vhsig");
    let k = d.tiny_kernel(HANG);
    let (_l, sock) = silent_backend(&d);
    let chardev = format!("socket,id=c0,path={sock}");
    let child = spawn(&vhost_args(&k, &chardev));
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGTERM);
    let t0 = Instant::now();
    let r = wait(child, T);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn kvm_stalled_stdout_reader_never_blocks_a_vcpu_and_sigterm_wins() {
    require_kvm();
    let d = TempDir::new("rb-stall");
    let k = d.tiny_kernel(FLOOD);
    // stdout is a pipe nobody reads: it fills after 64 KiB.
    let mut child = spawn(&["-kernel", &k, "-m", "16", "--stats=json"]);
    let stdout = child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, libc::SIGTERM);
    let t0 = Instant::now();
    let r = wait(child, T);
    drop(stdout);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let stats = r
        .stderr
        .lines()
        .find(|l| l.starts_with("{\"shmvm_stats\":1,"))
        .expect("stats line");
    assert!(json_u64(stats, "console_dropped_bytes") > 0, "{stats}");
}

#[test]
fn kvm_sighup_ends_the_vm_with_cleanup() {
    require_kvm();
    let d = TempDir::new("rb-hup");
    let k = d.tiny_kernel(HANG);
    let name = format!("/shmvm-test-{}-hup", std::process::id());
    let obj = format!("memory-backend-shm,id=m,size=16M,name={name}");
    let child = spawn(&[
        "-kernel",
        &k,
        "-object",
        &obj,
        "-machine",
        "memory-backend=m",
    ]);
    let shm = format!("/dev/shm{name}");
    let t0 = Instant::now();
    while !Path::new(&shm).exists() && t0.elapsed() < T {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGHUP);
    let r = wait(child, T);
    let left = Path::new(&shm).exists();
    let _ = std::fs::remove_file(&shm);
    assert_eq!(r.code, Some(128 + libc::SIGHUP), "{r:?}");
    assert!(!left, "SIGHUP left {shm} behind");
}

#[test]
fn kvm_named_shm_after_sigkill_is_told_stale_and_reclaimed() {
    require_kvm();
    let d = TempDir::new("rb-kill");
    let k = d.tiny_kernel(HANG);
    let name = format!("/shmvm-test-{}-kill", std::process::id());
    let shm = format!("/dev/shm{name}");
    let obj = format!("memory-backend-shm,id=m,size=16M,name={name}");
    let mut child = spawn(&[
        "-kernel",
        &k,
        "-object",
        &obj,
        "-machine",
        "memory-backend=m",
    ]);
    let t0 = Instant::now();
    while !Path::new(&shm).exists() && t0.elapsed() < T {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    // While it runs, the object is live: a second run says so.
    let r = refused(
        &[
            "-kernel",
            &k,
            "-object",
            &obj,
            "-machine",
            "memory-backend=m",
        ],
        "in use by a running shmvm",
    );
    drop(r);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(Path::new(&shm).exists(), "SIGKILL cannot clean up");
    refused(
        &[
            "-kernel",
            &k,
            "-object",
            &obj,
            "-machine",
            "memory-backend=m",
        ],
        "reclaim=on",
    );
    let reclaim = format!("{obj},reclaim=on");
    let child = spawn(&[
        "-kernel",
        &k,
        "-object",
        &reclaim,
        "-machine",
        "memory-backend=m",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGTERM);
    let r = wait(child, T);
    let left = Path::new(&shm).exists();
    let _ = std::fs::remove_file(&shm);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{r:?}");
    assert!(r.stderr.contains("replacing a stale shm object"), "{r:?}");
    assert!(!left, "{shm} left behind");
}

#[test]
fn kvm_created_mem_path_is_removed_when_a_later_step_fails() {
    require_kvm();
    let d = TempDir::new("rb-left");
    let k = d.tiny_kernel(HANG);
    let bad_kernel = d.0.join("bad.elf");
    std::fs::write(&bad_kernel, b"\x7fELF\x02\x01\x01 not really").unwrap();
    let ram = d.0.join("ram");
    let obj = format!(
        "memory-backend-file,id=m,size=16M,share=on,mem-path={}",
        ram.display()
    );
    let base = ["-object", obj.as_str(), "-machine", "memory-backend=m"];
    let serial = format!("file:{}", d.0.join("no/such/dir/log").display());
    let bad = bad_kernel.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["-kernel", &k, "-serial", &serial],
        vec!["-kernel", bad],
        vec![
            "-kernel",
            &k,
            "-chardev",
            "socket,id=c0,path=/nonexistent/shmvm.sock",
            "-device",
            "vhost-user-blk-pci,chardev=c0",
        ],
    ];
    for c in cases {
        let mut args = c.clone();
        args.extend_from_slice(&base);
        let r = run(&args, T);
        assert_eq!(r.code, Some(2), "{args:?}: {r:?}");
        assert!(!ram.exists(), "{args:?} left {} behind", ram.display());
    }
    // An ivshmem device whose memdev cannot be used.
    let big = format!(
        "memory-backend-file,id=sh,size=1T,share=on,mem-path={}",
        d.0.join("sh").display()
    );
    let mut args = vec!["-kernel", k.as_str(), "-m", "16", "-object", &big];
    args.extend_from_slice(&["-device", "ivshmem-plain,memdev=sh"]);
    let r = run(&args, T);
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(!d.0.join("sh").exists(), "ivshmem memdev file left behind");
    // The one line names the device, the limit and the memdev.
    for what in ["ivshmem-plain #0", "64-bit window", "memdev 'sh'"] {
        assert!(r.stderr.contains(what), "{what}: {:?}", r.stderr);
    }
    assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
}

#[test]
fn kvm_debug_exit_over_pci_config_ports_is_a_config_error() {
    require_kvm();
    let d = TempDir::new("rb-dbg");
    let k = d.tiny_kernel(HANG);
    let r = refused(
        &[
            "-kernel",
            &k,
            "-device",
            "isa-debug-exit,iobase=0xcf8,iosize=4",
        ],
        "0xcf8",
    );
    drop(r);
}

#[test]
fn prealloc_beyond_the_host_is_refused_in_one_line() {
    let d = TempDir::new("rb-pre");
    let k = d.tiny_kernel(HANG);
    let name = format!("/shmvm-test-{}-pre", std::process::id());
    let obj = format!("memory-backend-shm,id=m,size=4T,prealloc=on,name={name}");
    refused(
        &[
            "-kernel",
            &k,
            "-object",
            &obj,
            "-machine",
            "memory-backend=m",
        ],
        "prealloc",
    );
    assert!(!Path::new(&format!("/dev/shm{name}")).exists());
}

#[test]
fn kvm_serial_file_is_0600_whatever_the_umask_and_never_follows_a_link() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    require_kvm();
    let d = TempDir::new("rb-serial");
    // `mov al, 0; out 0xf4, al`: isa-debug-exit, exit code 1.
    let k = d.tiny_kernel(&[0xb0, 0x00, 0xe6, 0xf4, 0xeb, 0xfe]);
    let target = d.0.join("target");
    std::fs::write(&target, b"precious").unwrap();
    let link = d.0.join("log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let serial = format!("file:{}", link.display());
    refused(&["-kernel", &k, "-serial", &serial], "symbolic link");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    let log = d.0.join("log2");
    let serial = format!("file:{}", log.display());
    let mut cmd = Command::new(shmvm_bin());
    cmd.args(["-kernel", &k, "-m", "16", "-serial", &serial])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    };
    let r = wait(cmd.spawn().unwrap(), T);
    assert_eq!(r.code, Some(1), "{r:?}");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "serial log mode under umask 000");
}

/// Six multiport virtio-serial functions (virtme-ng's line) hold about
/// 2300 eventfds: shmvm raises its soft open-file limit to the hard one,
/// as QEMU does, instead of failing with EMFILE under the usual 1024.
#[test]
fn kvm_six_virtio_serial_functions_start_under_a_soft_open_file_limit_of_1024() {
    use std::os::unix::process::CommandExt;
    require_kvm();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(
        lim.rlim_max >= 4096,
        "this test needs a hard open-file limit of at least 4096, not {}",
        lim.rlim_max
    );
    let d = TempDir::new("rb-nofile");
    // `mov al, 0; out 0xf4, al`: isa-debug-exit, exit code 1.
    let k = d.tiny_kernel(&[0xb0, 0x00, 0xe6, 0xf4, 0xeb, 0xfe]);
    let mut cmd = Command::new(shmvm_bin());
    cmd.args(["-kernel", &k, "-m", "64"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    for i in 0..6 {
        cmd.args(["-device", "virtio-serial-pci", "-chardev"])
            .arg(format!("null,id=c{i}"))
            .arg("-device")
            .arg(format!("virtserialport,chardev=c{i},name=p{i}"));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let hard = lim.rlim_max;
    // SAFETY: setrlimit(2) is async-signal-safe and touches only its argument.
    unsafe {
        cmd.pre_exec(move || {
            let soft = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let r = wait(cmd.spawn().unwrap(), T);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(!r.stderr.contains("Too many open files"), "{r:?}");
}

#[test]
fn negative_memory_and_vcpus_name_their_option() {
    refused(&["-kernel", "/nonexistent", "-m", "-1"], "-m: size: '-1'");
    refused(
        &["-kernel", "/nonexistent", "-smp", "-1"],
        "-smp: cpus='-1'",
    );
}

/// A guest that moves ivshmem's BAR2 (00:01.0, 64-bit) onto guest RAM
/// 2,000 times: each move fails to map (it overlaps RAM) and used to log one
/// warning (100,000 moves were 15 MB of stderr). A low-half write of a
/// decoding 64-bit BAR waits for the high half, so each round writes
/// low = 0, high = 0 (stops decoding), then low = 1 MiB (decodes, fails).
const BAR_STORM: &[u8] = &[
    0xb9, 0xd0, 0x07, 0x00, 0x00, // mov ecx, 2000
    // loop:
    0x66, 0xba, 0xf8, 0x0c, 0xb8, 0x18, 0x08, 0x00, 0x80, 0xef, // BAR2 low
    0x66, 0xba, 0xfc, 0x0c, 0x31, 0xc0, 0xef, // = 0 (deferred)
    0x66, 0xba, 0xf8, 0x0c, 0xb8, 0x1c, 0x08, 0x00, 0x80, 0xef, // BAR2 high
    0x66, 0xba, 0xfc, 0x0c, 0x31, 0xc0, 0xef, // = 0: unmapped
    0x66, 0xba, 0xf8, 0x0c, 0xb8, 0x18, 0x08, 0x00, 0x80, 0xef, // BAR2 low
    0x66, 0xba, 0xfc, 0x0c, 0xb8, 0x00, 0x00, 0x10, 0x00, 0xef, // = 1 MiB: fails
    0x49, // dec ecx
    0x75, 0xc7, // jnz loop
    0xb0, 0x00, 0xe6, 0xf4, // isa-debug-exit 0: exit code 1
    0xeb, 0xfe,
];

#[test]
fn kvm_bar_move_storm_is_rate_limited_with_full_counts_in_stats() {
    require_kvm();
    let d = TempDir::new("rb-flood");
    let k = d.tiny_kernel(BAR_STORM);
    let r = run(
        &[
            "-kernel",
            &k,
            "-m",
            "64",
            "-object",
            "memory-backend-shm,id=sh,size=1M",
            "-device",
            "ivshmem-plain,memdev=sh",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
            "--stats=json",
        ],
        T,
    );
    assert_eq!(r.code, Some(1), "{r:?}");
    let warnings = r.stderr.lines().filter(|l| l.contains("warn")).count();
    assert!(warnings <= 40, "{warnings} warning lines:\n{}", r.stderr);
    let stats = r
        .stderr
        .lines()
        .find(|l| l.starts_with("{\"shmvm_stats\":1,"))
        .expect("stats line");
    assert!(json_u64(stats, "guest_log_lines") >= 2000, "{stats}");
    assert!(json_u64(stats, "guest_log_suppressed") >= 1900, "{stats}");
}

/// Fields of `/proc/<pid>/task/*/status` and the fds' flags of a running
/// shmvm: every fd of its own is O_CLOEXEC (four eventfds were not), and
/// every thread runs with a seccomp filter, no_new_privs and no
/// capabilities once the guest runs.
#[test]
fn kvm_every_fd_is_cloexec_and_every_thread_is_sandboxed() {
    require_kvm();
    let d = TempDir::new("rb-posture");
    let k = d.tiny_kernel(HANG);
    let obj = format!(
        "memory-backend-file,id=sh,size=1M,share=on,mem-path={}",
        d.0.join("sh").display()
    );
    // Only stdin, stdout and stderr are inherited (the test harness may
    // hold other fds open without O_CLOEXEC): any other fd is shmvm's own.
    let mut cmd = Command::new(shmvm_bin());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: close_range is async-signal-safe and only closes fds of the
    // child between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd
        .args([
            "-kernel",
            &k,
            "-smp",
            "2",
            "-object",
            &obj,
            "-device",
            "ivshmem-plain,memdev=sh",
            "-device",
            "isa-debug-exit",
        ])
        .spawn()
        .expect("spawn shmvm");
    let proc_dir = format!("/proc/{}", child.id());
    // The guest runs once every thread is in its filter; poll for it.
    let t0 = Instant::now();
    let threads = loop {
        let tasks: Vec<String> = std::fs::read_dir(format!("{proc_dir}/task"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
                    .collect()
            })
            .unwrap_or_default();
        let field = |s: &str, f: &str| {
            s.lines()
                .find_map(|l| l.strip_prefix(f))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let all_in = tasks.len() >= 3
            && tasks.iter().all(|s| {
                field(s, "Seccomp:") == "2"
                    && field(s, "NoNewPrivs:") == "1"
                    && field(s, "CapEff:") == "0000000000000000"
            });
        if all_in || t0.elapsed() > T {
            break (all_in, tasks.len());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut open = Vec::new();
    for e in std::fs::read_dir(format!("{proc_dir}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let fd: i32 = e.file_name().to_string_lossy().parse().unwrap();
        let Ok(info) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap();
        let target = std::fs::read_link(format!("{proc_dir}/fd/{fd}")).unwrap_or_default();
        if fd > 2 && flags & libc::O_CLOEXEC as u32 == 0 {
            open.push(format!("fd {fd} -> {}", target.display()));
        }
    }
    signal(&child, libc::SIGTERM);
    let r = wait(child, T);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{r:?}");
    assert!(
        threads.0,
        "not every one of {} threads is sandboxed",
        threads.1
    );
    assert!(open.is_empty(), "fds without O_CLOEXEC: {open:?}");
    assert!(!r.stderr.contains("sandbox"), "{}", r.stderr);
}

/// A vhost-user back-end (qemu-storage-daemon) stopped with SIGSTOP while
/// the VM runs: the VM goes on, and SIGTERM still ends it within a bounded
/// time (every request to the back-end has a 5 s deadline), with cleanup
/// (the named RAM object is gone) and at most one line about the back-end.
#[test]
fn kvm_sigterm_wins_over_a_sigstopped_vhost_user_backend() {
    require_kvm();
    let d = TempDir::new("rb-vhstop");
    let img = d.0.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 20))
        .unwrap();
    let qsd = shmvm_tests::qsd::Qsd::start(&img, &d.0.join("vhost.sock"));
    let k = d.tiny_kernel(HANG);
    let name = format!("/shmvm-test-{}-vhstop", std::process::id());
    let obj = format!("memory-backend-shm,id=m,size=64M,name={name}");
    let chardev = format!("socket,id=c0,path={}", qsd.sock.display());
    let mut child = spawn(&[
        "-kernel",
        &k,
        "-object",
        &obj,
        "-machine",
        "memory-backend=m",
        "-chardev",
        &chardev,
        "-device",
        "vhost-user-blk-pci,chardev=c0",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the daemon we started.
    unsafe { libc::kill(qsd.pid() as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the VM ended when its back-end stopped"
    );
    let t0 = Instant::now();
    signal(&child, libc::SIGTERM);
    let r = wait(child, T);
    let took = t0.elapsed();
    // SAFETY: kill(2) on the daemon we started (dropping it kills it).
    unsafe { libc::kill(qsd.pid() as i32, libc::SIGCONT) };
    drop(qsd);
    let shm = format!("/dev/shm{name}");
    let left = Path::new(&shm).exists();
    let _ = std::fs::remove_file(&shm);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{r:?}");
    assert!(
        took < Duration::from_secs(8),
        "SIGTERM took {took:?}: {r:?}"
    );
    assert!(!left, "{shm} left behind");
    // The signal's own line, and at most one about the back-end.
    let about: Vec<&str> = r.stderr.lines().filter(|l| l.contains("vhost")).collect();
    assert!(about.len() <= 1, "{:?}", r.stderr);
    let others: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| !l.contains("vhost") && *l != "shmvm: stopped by signal 15")
        .collect();
    assert!(others.is_empty(), "{:?}", r.stderr);
}

/// The virtio-serial arguments for one port on a socket shmvm listens on.
fn port_socket_args<'a>(k: &'a str, chardev: &'a str) -> Vec<&'a str> {
    vec![
        "-kernel",
        k,
        "-m",
        "32",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        chardev,
        "-device",
        "virtserialport,chardev=p0,name=test.port",
    ]
}

/// A virtserialport on `-chardev socket,server=on,wait=off`, host side:
/// the socket appears with mode 0600 whatever the umask, takes a client,
/// takes the next one after it leaves, and is gone when SIGTERM ends the VM.
#[test]
fn kvm_virtserialport_socket_is_private_takes_clients_and_is_removed_at_exit() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    require_kvm();
    let d = TempDir::new("rb-vport");
    let k = d.tiny_kernel(HANG);
    let sock = d.0.join("port.sock");
    let chardev = format!("socket,id=p0,path={},server=on,wait=off", sock.display());
    let mut cmd = Command::new(shmvm_bin());
    cmd.args(port_socket_args(&k, &chardev))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: umask(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        })
    };
    let child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(t0.elapsed() < T, "no socket at {}", sock.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = std::fs::symlink_metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(
        m.permissions().mode() & 0o777,
        0o600,
        "socket mode under umask 000"
    );
    // The sockets shmvm holds (by inode: a dup is the same one): an
    // accepted client adds one.
    let pid = child.id();
    let sockets = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .filter(|l| l.starts_with("socket:"))
            .collect()
    };
    let until = |what: &str, f: &dyn Fn(&std::collections::BTreeSet<String>) -> bool| {
        let t0 = Instant::now();
        loop {
            let s = sockets();
            if f(&s) {
                return s;
            }
            assert!(t0.elapsed() < T, "{what}: {s:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let base = sockets();
    let connect = || std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut c1 = connect();
    // The guest has not opened the port: the bytes are held, the write
    // does not fail.
    std::io::Write::write_all(&mut c1, b"to the guest\n").unwrap();
    let first = until("the first client accepted", &|s| s.len() == base.len() + 1);
    // A second client waits in the backlog while the first is connected.
    let c2 = connect();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(sockets(), first, "a second client was taken");
    drop(c1);
    until("the second client accepted after the first left", &|s| {
        s.len() == base.len() + 1 && s.is_disjoint(&first.difference(&base).cloned().collect())
    });
    drop(c2);
    until("the second client's end closed", &|s| *s == base);
    signal(&child, libc::SIGTERM);
    let r = wait(child, T);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{r:?}");
    assert!(!r.stderr.contains("sandbox:"), "{r:?}");
    assert!(!sock.exists(), "{} left behind: {r:?}", sock.display());
    assert_eq!(d.entries(), ["tiny.elf"], "{r:?}");
}

/// Paths a port's socket cannot be made at: one line naming the device,
/// exit 2, nothing left behind.
#[test]
fn kvm_virtserialport_socket_paths_that_cannot_be_bound_are_refused() {
    require_kvm();
    let d = TempDir::new("rb-vport-bad");
    let k = d.tiny_kernel(HANG);
    let file = d.0.join("a-file");
    std::fs::write(&file, b"keep me").unwrap();
    let long = d.0.join("x".repeat(120));
    let missing = d.0.join("no-such-dir/port.sock");
    for (path, why) in [
        (&file, "exists and is not a socket"),
        (&long, "cannot listen"),
        (&missing, "cannot listen"),
    ] {
        let chardev = format!("socket,id=p0,path={},server=on,wait=off", path.display());
        let r = refused(
            &port_socket_args(&k, &chardev),
            "-device virtserialport,chardev=p0: ",
        );
        assert!(r.stderr.contains(why), "{path:?}: {:?}", r.stderr);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let mut left = d.entries();
    left.sort();
    assert_eq!(left, ["a-file", "tiny.elf"]);
}
