//! `shmvm`: parse the command line, run the VM, turn its ending into an
//! exit code. Also started as `qemu-system-x86_64` (through a symlink, for
//! tools that only know QEMU's name): the command line means the same.

use std::process::ExitCode;
use std::time::Instant;

use vmm::cli::ParseOutcome;

fn init_logging(verbose: u8) {
    // No logger at all when quiet: nothing to initialize or format.
    let level = match verbose {
        0 => {
            log::set_max_level(log::LevelFilter::Warn);
            return init_min();
        }
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .format_timestamp_micros()
        .init();
}

/// A minimal stderr logger for warnings and errors when not verbose.
fn init_min() {
    struct Min;
    impl log::Log for Min {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("shmvm: {}: {}", r.level().as_str().to_lowercase(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static MIN: Min = Min;
    let _ = log::set_logger(&MIN);
}

/// `-pidfile FILE`: our pid while we run, as QEMU writes it; removed when
/// dropped (at exit, whatever the VM's ending).
#[derive(Debug)]
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn create(path: &std::path::Path) -> Result<PidFile, String> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("-pidfile {}: {e}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c & 0xff).unwrap_or(1))
}

fn main() -> ExitCode {
    let start = Instant::now();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    init_logging(vmm::cli::verbosity(&argv));
    let parsed = match vmm::cli::parse(argv) {
        Ok(p) => p,
        Err(ParseOutcome::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(ParseOutcome::Error(e)) => {
            eprintln!("shmvm: {}", vmm::cli::one_line(&e.to_string()));
            return code(e.exit_code());
        }
    };
    let cfg = parsed.config;
    let _pidfile = match cfg.pidfile.as_deref().map(PidFile::create).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shmvm: {}", vmm::cli::one_line(&e.to_string()));
            return code(2);
        }
    };
    for n in &parsed.noops {
        log::info!("{n}");
    }
    if let Some(n) = vmm::fd_limit::raise() {
        log::debug!("open-file limit {n}");
    }
    match vmm::machine::run(&cfg, start) {
        Ok(end) => {
            if let Some(line) = end.describe() {
                eprintln!("shmvm: {line}");
            }
            code(end.exit_code())
        }
        Err(e) => {
            eprintln!("shmvm: {}", vmm::cli::one_line(&e.to_string()));
            code(e.exit_code())
        }
    }
}
