//! `ivshmem-server`: QEMU's ivshmem server, with its options, over shmvm's
//! memory backends.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use ivshmem_server::server::{
    DEFAULT_PID_FILE, DEFAULT_SHM_NAME, DEFAULT_SOCKET, DEFAULT_VECTORS, Server, ServerConfig,
    ShmSource,
};

/// The options of QEMU's ivshmem-server, plus --keep.
#[derive(Debug, Parser)]
#[command(
    name = "ivshmem-server",
    version,
    about = "An ivshmem server speaking QEMU's protocol (docs/specs/ivshmem-spec.rst)"
)]
struct Args {
    /// Path to the Unix socket to listen on.
    #[arg(short = 'S', value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// POSIX shared memory object name (created, O_EXCL, mode 0600).
    #[arg(short = 'M', value_name = "NAME", default_value = DEFAULT_SHM_NAME)]
    shm_name: String,
    /// A file to create for the shared memory instead (or a directory, e.g.
    /// on hugetlbfs, to hold an unlinked temporary file); overrides -M.
    #[arg(short = 'm', value_name = "PATH")]
    shm_path: Option<PathBuf>,
    /// Size of the shared memory (suffixes K, M, G; a power of two).
    #[arg(short = 'l', value_name = "SIZE", default_value = "4M")]
    size: String,
    /// Number of vectors (interrupts) per peer.
    #[arg(short = 'n', value_name = "N", default_value_t = DEFAULT_VECTORS)]
    vectors: u16,
    /// Stay in the foreground (default: become a daemon).
    #[arg(short = 'F')]
    foreground: bool,
    /// Pid file written when running as a daemon.
    #[arg(short = 'p', value_name = "PATH", default_value = DEFAULT_PID_FILE)]
    pid_file: PathBuf,
    /// Verbose (repeat for more).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    verbose: u8,
    /// Leave the shm object or file behind at exit.
    #[arg(long)]
    keep: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    env_logger::Builder::new().filter_level(level).init();
    let size = match memory::parse_size(&args.size, 1) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ivshmem-server: -l {}: {e}", args.size);
            return ExitCode::from(2);
        }
    };
    let cfg = ServerConfig {
        socket: args.socket.clone(),
        shm: match &args.shm_path {
            Some(p) => ShmSource::Path(p.clone()),
            None => ShmSource::Name(args.shm_name.clone()),
        },
        size,
        vectors: args.vectors,
        keep: args.keep,
    };
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(sig, on_stop) {
            eprintln!("ivshmem-server: signal {sig}: {e}");
            return ExitCode::from(1);
        }
    }
    let mut server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ivshmem-server: {e}");
            return ExitCode::from(2);
        }
    };
    if !args.foreground {
        // SAFETY: no other thread exists yet (the server runs on this one),
        // so forking here is sound; daemon(3) keeps the cwd (nochdir=1) and
        // sends stdio to /dev/null (noclose=0).
        if unsafe { libc::daemon(1, 0) } != 0 {
            eprintln!(
                "ivshmem-server: can't become a daemon: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(1);
        }
        if let Err(e) = std::fs::write(&args.pid_file, format!("{}\n", std::process::id())) {
            log::error!("-p {}: {e}", args.pid_file.display());
            return ExitCode::from(1);
        }
    }
    let r = server.run(&STOP);
    drop(server);
    if !args.foreground {
        let _ = std::fs::remove_file(&args.pid_file);
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("ivshmem-server: {e}");
            ExitCode::from(1)
        }
    }
}
