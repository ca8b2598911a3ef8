//! The built-in virtio devices' option errors: exit code 2, one line on
//! stderr naming the whole option, nothing left behind. The image checks
//! happen once the VM exists, so those cases need /dev/kvm (their names
//! say so).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use shmvm_tests::harness::{TempDir, command, leftover_shm, refused, require_kvm};

/// `jmp .`
const HANG: &[u8] = &[0xeb, 0xfe];

fn check(args: &[&str], names: &str, dir: &TempDir) {
    let before = dir.entries();
    let r = refused(command(args), names);
    assert_eq!(leftover_shm(r.pid), Vec::<String>::new(), "{args:?}");
    assert_eq!(dir.entries(), before, "{args:?}: temp dir changed");
}

#[test]
fn drive_and_device_spellings_are_refused_naming_the_option() {
    let d = TempDir::new("virtio-cli");
    let k = d.tiny_kernel(HANG);
    let k = k.as_str();
    for (extra, names) in [
        (
            vec!["-drive", "file=a.img,if=ide,format=raw"],
            "-drive: 'file=a.img,if=ide,format=raw': if=ide",
        ),
        (
            vec!["-drive", "file=a.img,if=virtio,format=qcow2"],
            "-drive: 'file=a.img,if=virtio,format=qcow2': format=qcow2",
        ),
        (
            vec!["-drive", "file=a.img,if=virtio"],
            "format= is required",
        ),
        (
            vec!["-device", "virtio-blk-pci,drive=d9"],
            "-device: virtio-blk-pci,drive=d9: no -drive has that id",
        ),
        (
            vec![
                "-chardev",
                "null,id=c",
                "-device",
                "virtserialport,chardev=c,name=x",
            ],
            "-device: virtserialport,chardev=c: no virtio-serial-pci",
        ),
        (
            vec![
                "-device",
                "virtio-serial-pci",
                "-device",
                "virtconsole,chardev=nope",
            ],
            "no -chardev with id=nope",
        ),
        (vec!["-device", "virtio-rng-pci,rng=rng0"], "'rng'"),
    ] {
        let mut args = vec!["-kernel", k];
        args.extend(extra);
        check(&args, names, &d);
    }
}

#[test]
fn kvm_images_that_cannot_be_used_are_refused() {
    require_kvm();
    let d = TempDir::new("virtio-img");
    let k = d.tiny_kernel(HANG);
    let k = k.as_str();
    let missing = d.0.join("missing.img");
    let missing_spec = format!("file={},if=virtio,format=raw", missing.display());
    let dir_spec = format!("file={},if=virtio,format=raw", d.0.display());
    let fifo = d.0.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let fifo_spec = format!("file={},if=virtio,format=raw,readonly=on", fifo.display());
    let shm = "memory-backend-shm,id=m,size=32M";
    for (spec, why) in [
        (&missing_spec, "No such file"),
        (&dir_spec, "Is a directory"),
        (&fifo_spec, "not a regular file or a block device"),
    ] {
        let args = [
            "-kernel",
            k,
            "-object",
            shm,
            "-machine",
            "memory-backend=m",
            "-drive",
            spec,
        ];
        check(&args, &format!("-drive {spec}: "), &d);
        check(&args, why, &d);
    }
}
