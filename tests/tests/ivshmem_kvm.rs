//! ivshmem-plain end to end: the real shmvm binary, the test kernel, and
//! separate host processes (`shm-peer`). Every test here needs /dev/kvm and
//! fails loudly without it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use shmvm_tests::harness::{
    self, RemoveOnDrop, require_kvm, run_testkernel, unique, with_testkernel,
};
use shmvm_tests::shm::Region;
use shmvm_tests::stats::Ivshmem;

const PEER: &str = env!("CARGO_BIN_EXE_shm-peer");
const MIB: u64 = 1 << 20;

/// Starts `shm-peer` as its own process.
fn peer(args: &[&str]) -> std::process::Child {
    Command::new(PEER)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting shm-peer")
}

fn peer_ok(child: std::process::Child) -> String {
    let out = child.wait_with_output().expect("shm-peer output");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "shm-peer failed: {o}{e}");
    o.into_owned()
}

/// The statistics of ivshmem device `n` (`--stats=json`).
fn ivshmem(run: &harness::Run, n: usize) -> Ivshmem {
    let st = run.stats();
    st.ivshmem
        .get(n)
        .cloned()
        .unwrap_or_else(|| panic!("no ivshmem device #{n} in the statistics: {st:?}"))
}

#[test]
fn kvm_ivshmem_file_handshake_move_and_zero_bar2_exits() {
    require_kvm();
    let name = unique("file");
    let path = Path::new("/dev/shm").join(&name);
    let _cleanup = RemoveOnDrop(path.clone());
    let object = format!(
        "memory-backend-file,id=hostmem,size=1M,mem-path={},share=on",
        path.display()
    );
    let vm = with_testkernel(&[
        "-m",
        "64M",
        "-object",
        &object,
        "-device",
        "ivshmem-plain,memdev=hostmem,master=on",
        "-append",
        "shmvm.test=ivshmem,ivshmem-move shmvm.seed=0x1234 shmvm.timeout_ms=30000 shmvm.ivshmem_size=0x100000",
        "--stats=json",
    ])
    .spawn()
    .expect("starting shmvm");
    let host = peer(&["handshake", path.to_str().unwrap_or_default(), "30000"]);
    let run = harness::wait(vm, Duration::from_secs(60));
    let said = peer_ok(host);
    run.assert_pass();
    assert!(said.contains("handshake ok bytes=1044480"), "{said}");
    // The guest checked every ID register and read back the VMM's BARs.
    for want in [
        "shmvm: ivshmem pci=00:01.0 id=1af4:1110 rev=1 class=050000 subsystem=1af4:1100",
        "shmvm: ivshmem bar0=0xc0000000 size=256 flags=0x0",
        "shmvm: ivshmem bar2=0x100000000 size=1048576 flags=0xc",
        "shmvm: ivshmem ivposition=0x0",
        "shmvm: ivshmem handshake ok",
        "shmvm: ivshmem move bar2 from=0x100000000 to=0x100100000 readback=0x100100000",
    ] {
        assert!(
            run.stdout.contains(want),
            "missing '{want}' in\n{}",
            run.stdout
        );
    }
    // The region followed the BAR: the guest's markers, written before the
    // move, are in the host file; the counters show BAR2 at its new place
    // and not one VM exit caused by BAR2.
    let iv = ivshmem(&run, 0);
    assert_eq!(iv.bar2_addr, Some(0x1_0010_0000), "{iv:?}");
    assert_eq!(iv.bar2_exits, 0, "{iv:?}");
    assert_eq!(
        iv.bar2_maps, 3,
        "assign + re-enable after sizing + move: {iv:?}"
    );
    let r = Region::open_file(&path).expect("the file outlives the VM");
    assert_eq!(r.rd64(0), 0x1234 ^ 0x4D4F_5645_0000_0001, "first marker");
    assert_eq!(
        r.rd64(r.len() - 8),
        !0x1234u64 ^ 0x4D4F_5645_0000_0002,
        "last marker"
    );
}

#[test]
fn kvm_ivshmem_named_shm_object_reaches_a_host_process_and_goes_away() {
    require_kvm();
    let name = format!("/{}", unique("named"));
    let dev_shm = Path::new("/dev/shm").join(&name[1..]);
    let _cleanup = RemoveOnDrop(dev_shm.clone());
    let object = format!("memory-backend-shm,id=shared,size=2M,name={name}");
    let vm = with_testkernel(&[
        "-m",
        "64M",
        "-object",
        &object,
        "-device",
        "ivshmem-plain,memdev=shared,addr=5",
        "-append",
        "shmvm.test=ivshmem shmvm.timeout_ms=30000",
        "--stats=json",
    ])
    .spawn()
    .expect("starting shmvm");
    let host = peer(&["handshake", &format!("shm:{name}"), "30000"]);
    let run = harness::wait(vm, Duration::from_secs(60));
    let said = peer_ok(host);
    run.assert_pass();
    assert!(said.contains("handshake ok bytes=2093056"), "{said}");
    assert!(
        run.stdout.contains("shmvm: ivshmem pci=00:05.0"),
        "addr=5 is slot 5"
    );
    assert_eq!(ivshmem(&run, 0).bar2_exits, 0);
    assert!(
        !dev_shm.exists(),
        "{name} must be removed when the VM ends (keep=off)"
    );
}

#[test]
fn kvm_ivshmem_two_vms_and_a_host_process_share_slots() {
    require_kvm();
    let path = Path::new("/dev/shm").join(unique("slots"));
    let _cleanup = RemoveOnDrop(path.clone());
    // Created (zeroed) up front so no party can see stale slots.
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(MIB))
        .expect("creating the region");
    let object = format!(
        "memory-backend-file,id=m,size=1M,mem-path={},share=on",
        path.display()
    );
    let vm = |slot: u32| {
        let append = format!(
            "shmvm.test=ivshmem-slots shmvm.slot={slot} shmvm.parties=3 shmvm.seed=0xfeed shmvm.timeout_ms=40000"
        );
        with_testkernel(&[
            "-m",
            "64M",
            "-object",
            &object,
            "-device",
            "ivshmem-plain,memdev=m",
            "-append",
            &append,
            "--stats=json",
        ])
        .spawn()
        .expect("starting shmvm")
    };
    let (a, b) = (vm(0), vm(1));
    let host = peer(&[
        "slots",
        path.to_str().unwrap_or_default(),
        "2",
        "3",
        "0xfeed",
        "40000",
    ]);
    let (ra, rb) = (
        harness::wait(a, Duration::from_secs(60)),
        harness::wait(b, Duration::from_secs(60)),
    );
    let said = peer_ok(host);
    for r in [&ra, &rb] {
        r.assert_pass();
        assert!(
            r.stdout.contains("shmvm: ivshmem slots ok parties=3"),
            "{}",
            r.stdout
        );
        assert_eq!(ivshmem(r, 0).bar2_exits, 0);
    }
    assert!(said.contains("slots ok slot=2 parties=3"), "{said}");
}

#[test]
fn kvm_ivshmem_bench_runs_without_bar2_exits() {
    require_kvm();
    let run = run_testkernel(&[
        "-m",
        "96M",
        "-object",
        "memory-backend-memfd,id=b,size=8M",
        "-device",
        "ivshmem-plain,memdev=b",
        "-append",
        "shmvm.test=ivshmem-bench shmvm.bench_mib=8",
        "--stats=json",
    ]);
    run.assert_pass();
    for what in [
        "shmvm: bench bar2 write_mbps=",
        "shmvm: bench ram write_mbps=",
    ] {
        assert!(
            run.stdout.contains(what),
            "missing '{what}' in\n{}",
            run.stdout
        );
    }
    assert_eq!(ivshmem(&run, 0).bar2_exits, 0);
}

#[test]
fn kvm_ivshmem_several_devices_each_with_its_memdev() {
    require_kvm();
    let run = run_testkernel(&[
        "-m",
        "64M",
        "-object",
        "memory-backend-memfd,id=a,size=1M",
        "-object",
        "memory-backend-shm,id=b,size=4M",
        "-device",
        "ivshmem-plain,memdev=a,addr=3",
        "-device",
        "ivshmem-plain,memdev=b,addr=2",
        "-append",
        "shmvm.test=boot",
        "--stats=json",
    ]);
    run.assert_pass();
    let (a, b) = (ivshmem(&run, 0), ivshmem(&run, 1));
    assert_eq!(
        (a.pci.as_str(), a.memdev.as_str()),
        ("00:03.0", "a"),
        "{a:?}"
    );
    assert_eq!(
        (b.pci.as_str(), b.memdev.as_str()),
        ("00:02.0", "b"),
        "{b:?}"
    );
    // Largest BAR first, each naturally aligned in the 64-bit window.
    assert_eq!(b.bar2_addr, Some(0x1_0000_0000), "{b:?}");
    assert_eq!(a.bar2_addr, Some(0x1_0040_0000), "{a:?}");
}

#[test]
fn kvm_ivshmem_readonly_memdev_is_a_readonly_slot() {
    require_kvm();
    let path = Path::new("/dev/shm").join(unique("readonly"));
    let _cleanup = RemoveOnDrop(path.clone());
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(MIB))
        .expect("creating the region");
    let object = format!(
        "memory-backend-file,id=ro,size=1M,mem-path={},share=on,readonly=on",
        path.display()
    );
    // The move test writes two markers, then expects them at the new
    // address: with a read-only slot both writes exit and are dropped.
    let run = run_testkernel(&[
        "-m",
        "64M",
        "-object",
        &object,
        "-device",
        "ivshmem-plain,memdev=ro",
        "-append",
        "shmvm.test=ivshmem-move",
        "--stats=json",
    ]);
    assert_eq!(run.code, Some(35), "the guest must fail: {run:?}");
    assert!(
        run.stdout
            .contains("reason=ivshmem_move_data_not_at_new_address"),
        "{}",
        run.stdout
    );
    assert_eq!(ivshmem(&run, 0).bar2_exits, 2, "the two marker writes");
    let r = Region::open_file(&path).expect("the file");
    assert_eq!(
        (r.rd64(0), r.rd64(r.len() - 8)),
        (0, 0),
        "nothing reached the file"
    );
}

#[test]
fn kvm_ivshmem_named_shm_kept_after_the_vm_holds_the_data() {
    require_kvm();
    let name = format!("/{}", unique("kept"));
    let dev_shm = Path::new("/dev/shm").join(&name[1..]);
    let _cleanup = RemoveOnDrop(dev_shm.clone());
    let object = format!("memory-backend-shm,id=kept,size=1M,name={name},keep=on");
    let vm = with_testkernel(&[
        "-m",
        "64M",
        "-object",
        &object,
        "-device",
        "ivshmem-plain,memdev=kept",
        "-append",
        "shmvm.test=ivshmem shmvm.seed=0x77 shmvm.timeout_ms=30000",
    ])
    .spawn()
    .expect("starting shmvm");
    let host = peer(&["handshake", &format!("shm:{name}"), "30000"]);
    let run = harness::wait(vm, Duration::from_secs(60));
    peer_ok(host);
    run.assert_pass();
    // keep=on: the object outlives the VM with the host's pattern (P2) in it
    // and the guest's verdict in the header.
    let r = Region::open_shm(&name).expect("keep=on leaves the object");
    assert_eq!(r.rd32(protocol::HDR_STATE), protocol::STATE_GUEST_OK);
    for o in [0x1000u64, 0x8000, (1 << 20) - 8] {
        assert_eq!(r.rd64(o), protocol::p2(o, 0x77), "offset {o:#x}");
    }
}

#[test]
fn kvm_ivshmem_bar2_moved_onto_guest_ram_is_refused_not_fatal() {
    require_kvm();
    // The guest programs BAR2 at 16 MiB, inside its RAM: KVM refuses the
    // overlapping slot, the VMM says so, and the VM keeps running (the
    // guest then finds RAM, not the region, there and fails its check).
    let run = run_testkernel(&[
        "-m",
        "64M",
        "-object",
        "memory-backend-memfd,id=m,size=1M",
        "-device",
        "ivshmem-plain,memdev=m",
        "-append",
        "shmvm.test=ivshmem-move shmvm.bar2=0x1000000",
        "--stats=json",
    ]);
    assert_eq!(run.code, Some(35), "{run:?}");
    assert!(
        run.stdout
            .contains("reason=ivshmem_move_data_not_at_new_address"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("pci 00:01.0: mapping BAR2 mem 0x1000000+0x100000 failed, left unmapped"),
        "{}",
        run.stderr
    );
    assert_eq!(ivshmem(&run, 0).bar2_addr, None, "left unmapped");
}
