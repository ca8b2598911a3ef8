//! `shmvm`: parse the command line, run the VM, turn its ending into an
//! exit code.

use std::process::ExitCode;
use std::time::Instant;

use vmm::cli::{Config, ParseOutcome};

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

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c & 0xff).unwrap_or(1))
}

fn main() -> ExitCode {
    let start = Instant::now();
    let cfg = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        Err(ParseOutcome::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(ParseOutcome::Error(e)) => {
            eprintln!("shmvm: {e}");
            return code(2);
        }
    };
    init_logging(cfg.verbose);
    match vmm::machine::run(&cfg, start) {
        Ok(end) => {
            if let Some(line) = end.describe() {
                eprintln!("shmvm: {line}");
            }
            code(end.exit_code())
        }
        Err(e) => {
            eprintln!("shmvm: {e}");
            code(e.exit_code())
        }
    }
}
