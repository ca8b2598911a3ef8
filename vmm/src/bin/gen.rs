//! `shmvm-gen man | completions SHELL | readme-table`: what `make install`
//! installs, generated from the clap definition and the option table.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["man"] => {
            let cmd = vmm::cli::command().after_long_help(format!(
                "QEMU OPTIONS BY CLASS\n\n{}",
                vmm::cli::options::plain_table()
            ));
            clap_mangen::Man::new(cmd).render(&mut out)
        }
        ["completions", shell] => match shell.parse::<clap_complete::Shell>() {
            Ok(sh) => {
                let mut cmd = vmm::cli::command();
                clap_complete::generate(sh, &mut cmd, "shmvm", &mut out);
                Ok(())
            }
            Err(e) => {
                eprintln!("shmvm-gen: completions {shell}: {e}");
                return ExitCode::from(2);
            }
        },
        ["readme-table"] => out.write_all(vmm::cli::options::markdown_table().as_bytes()),
        _ => {
            eprintln!(
                "usage: shmvm-gen man | completions bash|zsh|fish|elvish|powershell | readme-table"
            );
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmvm-gen: {e}");
            ExitCode::from(1)
        }
    }
}
