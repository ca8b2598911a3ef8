//! Config::build across options (the CLI's tests cover the spellings).

use std::path::PathBuf;

use super::*;

fn input() -> Input {
    Input {
        kernel: Some(PathBuf::from("k")),
        ..Input::default()
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn numa_and_machine_must_agree_and_exist() {
    let mut i = input();
    i.objects = s(&[
        "memory-backend-ram,id=a,size=64M",
        "memory-backend-ram,id=b,size=64M",
    ]);
    i.machine = s(&["memory-backend=a"]);
    i.numa = s(&["node,memdev=b"]);
    let e = Config::build(i).unwrap_err().to_string();
    assert!(
        e.starts_with("-numa: memdev=b and -machine memory-backend=a"),
        "{e}"
    );
    let mut i = input();
    i.numa = s(&["node,memdev=nope"]);
    let e = Config::build(i).unwrap_err().to_string();
    assert!(
        e.starts_with("-numa: memory backend 'nope' is not defined"),
        "{e}"
    );
    let mut i = input();
    i.objects = s(&["memory-backend-ram,id=a,size=64M"]);
    i.numa = s(&["node,memdev=a"]);
    i.mem_path = Some(PathBuf::from("/tmp"));
    let e = Config::build(i).unwrap_err().to_string();
    assert!(e.starts_with("-mem-path: "), "{e}");
}

#[test]
fn mem_prealloc_applies_to_a_memdev_too() {
    let mut i = input();
    i.objects = s(&["memory-backend-memfd,id=m,size=64M"]);
    i.numa = s(&["node,memdev=m"]);
    i.mem_prealloc = true;
    let c = Config::build(i).unwrap();
    assert!(c.ram.prealloc());
}

#[test]
fn every_error_exits_2() {
    let e = Config::build(Input::default()).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().starts_with("-kernel: required"));
}

/// Nothing below the command line imports it: only `cli/`, `main.rs` and the
/// generator binary know clap or the cli module.
#[test]
fn nothing_below_the_cli_imports_it() {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("vmm/src").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let allowed = |p: &std::path::Path| {
        let rel = p.strip_prefix(&src).unwrap_or(p);
        rel.starts_with("cli") || rel.starts_with("bin") || rel == std::path::Path::new("main.rs")
    };
    for f in files.iter().filter(|f| !allowed(f)) {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        // Spelled in pieces so this file does not match itself.
        for needle in [
            concat!("crate::", "cli"),
            concat!("vmm::", "cli"),
            concat!("clap", "::"),
        ] {
            assert!(
                !text.contains(needle),
                "{} uses {needle}: only cli/ may",
                f.display()
            );
        }
    }
}
