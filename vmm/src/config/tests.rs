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
