//! ivshmem-plain configuration errors: each one line on stderr naming the
//! device and the memdev, exit code 2, nothing left behind. These fail
//! before any VM exists, so they do not need /dev/kvm.

use std::path::Path;

use shmvm_tests::harness::{self, RemoveOnDrop, unique, with_testkernel};

/// The one error line of a refused ivshmem configuration (it names the device).
fn refused(args: &[&str]) -> String {
    let run = harness::refused(with_testkernel(args), "ivshmem-plain");
    run.stderr.trim_end().to_string()
}

#[test]
fn ivshmem_memdev_must_exist() {
    let e = refused(&["-device", "ivshmem-plain,memdev=nope"]);
    assert_eq!(
        e,
        "shmvm: -device: ivshmem-plain #0: memdev 'nope' does not exist (define it with -object memory-backend-...,id=nope)"
    );
}

#[test]
fn ivshmem_memdev_must_not_be_guest_ram() {
    let e = refused(&[
        "-object",
        "memory-backend-shm,id=ram0,size=64M",
        "-machine",
        "memory-backend=ram0",
        "-device",
        "ivshmem-plain,memdev=ram0",
    ]);
    assert!(
        e.contains("ivshmem-plain #0: memdev 'ram0' is already in use by the machine as guest RAM"),
        "{e}"
    );
}

#[test]
fn ivshmem_memdev_must_not_be_behind_two_devices() {
    let e = refused(&[
        "-object",
        "memory-backend-shm,id=x,size=1M",
        "-device",
        "ivshmem-plain,memdev=x,id=first",
        "-device",
        "ivshmem-plain,memdev=x",
    ]);
    assert!(
        e.ends_with("ivshmem-plain #1: memdev 'x' is already in use by ivshmem-plain 'first'"),
        "{e}"
    );
}

#[test]
fn ivshmem_memdev_size_must_be_a_power_of_two() {
    let e = refused(&[
        "-object",
        "memory-backend-memfd,id=odd,size=3M",
        "-device",
        "ivshmem-plain,memdev=odd",
    ]);
    assert!(
        e.contains("ivshmem-plain #0: memdev 'odd' size 0x300000 is not a power of two"),
        "{e}"
    );
}

#[test]
fn ivshmem_memdev_must_be_shared_and_nothing_is_left_behind() {
    let path = Path::new("/dev/shm").join(unique("private"));
    let _cleanup = RemoveOnDrop(path.clone());
    let object = format!(
        "memory-backend-file,id=p,size=1M,mem-path={}",
        path.display()
    );
    let e = refused(&["-object", &object, "-device", "ivshmem-plain,memdev=p"]);
    assert!(
        e.contains(
            "ivshmem-plain #0: memdev 'p' has share=off: the guest would get a private copy"
        ),
        "{e}"
    );
    assert!(
        !path.exists(),
        "a refused configuration must not create {}",
        path.display()
    );
}

#[test]
fn ivshmem_bad_properties() {
    let e = refused(&["-device", "ivshmem-plain,memdev=m,addr=0"]);
    assert!(
        e.contains("ivshmem-plain: addr='0' is not a PCI slot"),
        "{e}"
    );
    let e = refused(&["-device", "ivshmem-plain,memdev=m,size=4M"]);
    assert!(e.contains("unknown property 'size'"), "{e}");
    let e = refused(&["-device", "ivshmem-plain"]);
    assert!(e.contains("memdev=ID is required"), "{e}");
}
