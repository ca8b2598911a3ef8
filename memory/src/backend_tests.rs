//! Tests of `Backend`: mapping, sharing across processes, files, shm names, seals,
//! prealloc, madvise flags and the errors only the host can reveal.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::testutil::{self, CHILD_OFFSET, CHILD_PATTERN, Handle, PARENT_PATTERN};

const PAGE: usize = 4096;

fn cfg(spec: &str) -> BackendConfig {
    crate::testutil::object(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn create(spec: &str) -> Backend {
    Backend::create(&cfg(spec)).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn create_err(spec: &str) -> Error {
    Backend::create(&cfg(spec)).expect_err(spec)
}

/// The backend's memory as a byte slice.
// The memory is not owned by the &Backend borrow: it is raw mapped memory.
#[allow(clippy::mut_from_ref)]
fn mem(b: &Backend) -> &mut [u8] {
    // SAFETY: the mapping is b.size() bytes, readable (and writable unless readonly),
    // lives as long as `b`, and each test uses one slice at a time.
    unsafe { std::slice::from_raw_parts_mut(b.as_ptr(), b.size() as usize) }
}

/// A unique path in the given directory, removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(dir: &str, tag: &str) -> TempPath {
        let p = Path::new(dir).join(format!("shmvm-memtest-{}-{tag}", std::process::id()));
        let _ = fs::remove_file(&p);
        let _ = fs::remove_dir_all(&p);
        TempPath(p)
    }
    fn s(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Names in /dev/shm that this process could have created for anonymous objects.
fn our_anonymous_shm_names() -> Vec<String> {
    let prefix = format!("shmvm-{}-", std::process::id());
    fs::read_dir("/dev/shm")
        .expect("/dev/shm")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// The child half of the cross-process tests (run by `testutil::run_child`).
#[test]
#[ignore = "child half of the cross-process tests; they run it"]
fn cross_process_child() {
    let fd = std::env::var(testutil::CHILD_SOCKET_ENV)
        .expect("only run by the cross-process tests")
        .parse()
        .expect("socket fd");
    testutil::child_main(fd);
}

/// Writes PARENT_PATTERN, lets a child map the memory, and returns (what the child
/// saw at 0, what we see where the child wrote).
fn exchange_with_child(b: &Backend, handle: Handle<'_>) -> ([u8; 16], [u8; 16]) {
    let m = mem(b);
    m[..16].copy_from_slice(PARENT_PATTERN);
    // Make our copy of the child's page exist first, so a private mapping has its own.
    m[CHILD_OFFSET] = 0;
    let seen_by_child = testutil::run_child(handle, b.size());
    let mut seen_here = [0u8; 16];
    seen_here.copy_from_slice(&mem(b)[CHILD_OFFSET..CHILD_OFFSET + 16]);
    (seen_by_child, seen_here)
}

#[test]
fn shared_backends_are_seen_by_another_process_both_ways() {
    let file = TempPath::new("/tmp", "xproc-file");
    let file2 = TempPath::new("/tmp", "xproc-file-offset");
    fs::write(&file2.0, vec![0u8; 128 << 10]).expect("pre-size");
    let specs = [
        "memory-backend-ram,id=r,size=64K,share=on".to_string(),
        format!(
            "memory-backend-file,id=f,size=64K,share=on,mem-path={}",
            file.s()
        ),
        format!(
            "memory-backend-file,id=fo,size=64K,share=on,offset=8K,mem-path={}",
            file2.s()
        ),
        "memory-backend-memfd,id=m,size=64K".to_string(),
        "memory-backend-shm,id=s,size=64K".to_string(),
    ];
    for spec in specs {
        let b = create(&spec);
        assert!(b.shared(), "{spec}");
        let fd = b
            .fd()
            .unwrap_or_else(|| panic!("{spec}: a shared backend has an fd"));
        let (child_saw, we_see) = exchange_with_child(&b, Handle::Fd(fd, b.fd_offset()));
        assert_eq!(
            &child_saw, PARENT_PATTERN,
            "{spec}: child must see our write"
        );
        assert_eq!(
            &we_see, CHILD_PATTERN,
            "{spec}: we must see the child's write"
        );
    }
}

#[test]
fn private_backends_are_not_shared_with_another_process() {
    let file = TempPath::new("/tmp", "xproc-private");
    let specs = [
        format!("memory-backend-file,id=f,size=64K,mem-path={}", file.s()),
        "memory-backend-memfd,id=m,size=64K,share=off".to_string(),
    ];
    for spec in specs {
        let b = create(&spec);
        assert!(!b.shared(), "{spec}");
        let fd = b.fd().unwrap_or_else(|| panic!("{spec}: fd-backed"));
        let (child_saw, we_see) = exchange_with_child(&b, Handle::Fd(fd, b.fd_offset()));
        assert_eq!(
            child_saw, [0; 16],
            "{spec}: child must not see our private write"
        );
        assert_eq!(we_see, [0; 16], "{spec}: we must not see the child's write");
    }
    // Private anonymous ram has no fd at all: no other process can map it.
    let b = create("memory-backend-ram,id=r,size=64K");
    assert!(!b.shared() && b.fd().is_none());
}

#[test]
fn named_shm_is_opened_by_name_from_another_process_and_removed_on_drop() {
    let name = format!("/shmvm-memtest-{}-named", std::process::id());
    let path = format!("/dev/shm{name}");
    let b = create(&format!("memory-backend-shm,id=s,size=64K,name={name}"));
    assert_eq!(b.shm_name(), Some(name.as_str()));
    let meta = fs::metadata(&path).expect("named object exists while the backend lives");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 64 << 10);
    let (child_saw, we_see) = exchange_with_child(&b, Handle::ShmName(&name));
    assert_eq!(&child_saw, PARENT_PATTERN);
    assert_eq!(&we_see, CHILD_PATTERN);
    drop(b);
    assert!(!Path::new(&path).exists(), "unlinked on drop");
}

#[test]
fn named_shm_with_keep_stays_after_drop() {
    let name = format!("/shmvm-memtest-{}-keep", std::process::id());
    let path = format!("/dev/shm{name}");
    let b = create(&format!(
        "memory-backend-shm,id=s,size=64K,name={name},keep=on"
    ));
    mem(&b)[..16].copy_from_slice(PARENT_PATTERN);
    drop(b);
    let data = fs::read(&path).expect("kept");
    sys::shm_unlink(&name).expect("cleanup");
    assert_eq!(&data[..16], PARENT_PATTERN);
}

#[test]
fn named_shm_that_exists_is_an_error_and_stays_untouched() {
    let name = format!("/shmvm-memtest-{}-exists", std::process::id());
    let path = format!("/dev/shm{name}");
    fs::write(&path, b"someone else's data").expect("pre-create");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = create_err(&format!("memory-backend-shm,id=s,size=64K,name={name}"));
    let msg = e.to_string();
    let after = fs::read(&path);
    let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
    let _ = fs::remove_file(&path);
    assert!(msg.starts_with("shm backend 's': name="), "{msg}");
    assert!(msg.contains("already exists"), "{msg}");
    assert_eq!(after.expect("still there"), b"someone else's data");
    assert_eq!(mode.expect("still there"), 0o644);
}

#[test]
fn anonymous_shm_never_leaves_a_name_even_when_a_later_step_fails() {
    let mut live = Vec::new();
    for i in 0..50 {
        live.push(create(&format!("memory-backend-shm,id=s{i},size=64K")));
        assert_eq!(
            our_anonymous_shm_names(),
            Vec::<String>::new(),
            "after creating {i}"
        );
    }
    // 1 EiB: the object is created and sized, then mmap fails.
    let e = create_err("memory-backend-shm,id=big,size=1E");
    assert!(
        e.to_string()
            .starts_with("shm backend 'big': size: can't map"),
        "{e}"
    );
    assert_eq!(
        our_anonymous_shm_names(),
        Vec::<String>::new(),
        "after a failed create"
    );
    drop(live);
    assert_eq!(
        our_anonymous_shm_names(),
        Vec::<String>::new(),
        "after drop"
    );
}

#[test]
fn named_shm_is_removed_when_a_later_step_fails() {
    let name = format!("/shmvm-memtest-{}-fail", std::process::id());
    let e = create_err(&format!("memory-backend-shm,id=s,size=1E,name={name}"));
    assert!(e.to_string().contains("can't map"), "{e}");
    assert!(!Path::new(&format!("/dev/shm{name}")).exists());
}

#[test]
fn file_share_on_keeps_data_in_the_file_after_drop() {
    let file = TempPath::new("/tmp", "persist");
    let b = create(&format!(
        "memory-backend-file,id=f,size=64K,share=on,mem-path={}",
        file.s()
    ));
    mem(&b)[100..116].copy_from_slice(PARENT_PATTERN);
    drop(b);
    let data = fs::read(&file.0).expect("file stays");
    assert_eq!(data.len(), 64 << 10);
    assert_eq!(&data[100..116], PARENT_PATTERN);
    // And a share=off backend over the same file sees the data but does not write it.
    let b = create(&format!(
        "memory-backend-file,id=f,size=64K,mem-path={}",
        file.s()
    ));
    assert_eq!(&mem(&b)[100..116], PARENT_PATTERN);
    mem(&b)[100] = b'X';
    drop(b);
    assert_eq!(fs::read(&file.0).expect("file")[100], PARENT_PATTERN[0]);
}

#[test]
fn file_created_with_mode_0600() {
    let file = TempPath::new("/tmp", "mode");
    let _b = create(&format!(
        "memory-backend-file,id=f,size=64K,mem-path={}",
        file.s()
    ));
    let meta = fs::metadata(&file.0).expect("created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 64 << 10);
}

#[test]
fn existing_file_is_used_as_is_never_truncated() {
    let file = TempPath::new("/tmp", "bigger");
    let content: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    fs::write(&file.0, &content).expect("write");
    let b = create(&format!(
        "memory-backend-file,id=f,size=64K,share=on,offset=64K,mem-path={}",
        file.s()
    ));
    assert_eq!(mem(&b)[..], content[64 << 10..128 << 10]);
    drop(b);
    assert_eq!(
        fs::read(&file.0).expect("read"),
        content,
        "not truncated, not changed"
    );
}

#[test]
fn existing_file_too_small_is_an_error_and_stays_untouched() {
    let file = TempPath::new("/tmp", "small");
    fs::write(&file.0, vec![7u8; 8192]).expect("write");
    for spec in [
        format!("memory-backend-file,id=f,size=64K,mem-path={}", file.s()),
        format!(
            "memory-backend-file,id=f,size=4K,offset=8K,mem-path={}",
            file.s()
        ),
    ] {
        let e = create_err(&spec);
        assert_eq!(e.option(), Some("mem-path"));
        assert!(
            e.to_string()
                .contains("is 8192 bytes, too small for offset"),
            "{e}"
        );
        assert_eq!(fs::read(&file.0).expect("read"), vec![7u8; 8192]);
    }
}

#[test]
fn new_file_is_removed_when_a_later_step_fails() {
    for dir in ["/tmp", "/dev/shm"] {
        let file = TempPath::new(dir, "fail");
        let e = create_err(&format!(
            "memory-backend-file,id=f,size=1E,share=on,mem-path={}",
            file.s()
        ));
        assert!(e.to_string().starts_with("file backend 'f': "), "{e}");
        assert!(
            !file.0.exists(),
            "{dir}: created file left behind after: {e}"
        );
    }
}

#[test]
fn directory_gets_an_unlinked_temporary_file() {
    let dir = TempPath::new("/dev/shm", "dir");
    fs::create_dir(&dir.0).expect("mkdir");
    let b = create(&format!(
        "memory-backend-file,id=f,size=1M,share=on,prealloc=on,mem-path={}",
        dir.s()
    ));
    assert!(b.fd().is_some());
    assert_eq!(
        fs::read_dir(&dir.0).expect("ls").count(),
        0,
        "no name while alive"
    );
    drop(b);
    assert_eq!(
        fs::read_dir(&dir.0).expect("ls").count(),
        0,
        "nothing after"
    );
}

#[test]
fn readonly_file_maps_read_only() {
    let file = TempPath::new("/tmp", "ro");
    fs::write(&file.0, vec![9u8; 8192]).expect("write");
    fs::set_permissions(&file.0, fs::Permissions::from_mode(0o400)).expect("chmod");
    let b = create(&format!(
        "memory-backend-file,id=f,size=8K,readonly=on,share=on,mem-path={}",
        file.s()
    ));
    assert!(b.readonly());
    assert_eq!(mem(&b)[8191], 9);
    assert!(!testutil::vm_flags(b.as_ptr()).contains(&"wr".to_string()));
    // prealloc of a read-only mapping faults pages in for reading.
    let b = create(&format!(
        "memory-backend-file,id=f,size=8K,readonly=on,prealloc=on,mem-path={}",
        file.s()
    ));
    // Rss counts mapped pages (mincore would count the file's page cache).
    assert_eq!(testutil::smaps_field(b.as_ptr(), "Rss:"), "8 kB");
    let lazy = create(&format!(
        "memory-backend-file,id=f,size=8K,readonly=on,mem-path={}",
        file.s()
    ));
    assert_eq!(testutil::smaps_field(lazy.as_ptr(), "Rss:"), "0 kB");
    // rom=off: the file is opened read-only but the mapping is private and writable.
    let b = create(&format!(
        "memory-backend-file,id=f,size=8K,readonly=on,rom=off,mem-path={}",
        file.s()
    ));
    assert!(!b.readonly());
    mem(&b)[0] = 1;
    drop(b);
    assert_eq!(fs::read(&file.0).expect("read")[0], 9);
    // A missing file can't be opened read-only, nor a directory.
    let missing = TempPath::new("/tmp", "ro-missing");
    let e = create_err(&format!(
        "memory-backend-file,id=f,size=8K,readonly=on,mem-path={}",
        missing.s()
    ));
    assert!(
        e.to_string().contains("can't open") && e.option() == Some("mem-path"),
        "{e}"
    );
    assert!(!missing.0.exists());
    let e = create_err("memory-backend-file,id=f,size=8K,readonly=on,mem-path=/tmp");
    assert!(
        e.to_string().contains("readonly=on needs an existing file"),
        "{e}"
    );
}

#[test]
fn file_align_and_offset_follow_the_page_size() {
    let file = TempPath::new("/tmp", "align");
    let b = create(&format!(
        "memory-backend-file,id=f,size=64K,align=16M,mem-path={}",
        file.s()
    ));
    assert_eq!(b.as_ptr() as usize % (16 << 20), 0);
    drop(b);
    let e = create_err(&format!(
        "memory-backend-file,id=f,size=64K,align=2K,mem-path={}",
        file.s()
    ));
    assert!(
        e.to_string()
            .contains("align=0x800 must be a multiple of the page size 0x1000"),
        "{e}"
    );
    let e = create_err(&format!(
        "memory-backend-file,id=f,size=64K,offset=100,mem-path={}",
        file.s()
    ));
    assert!(
        e.to_string()
            .contains("offset=0x64 must be a multiple of the page size 0x1000"),
        "{e}"
    );
}

#[test]
fn discard_data_drops_the_file_contents() {
    let file = TempPath::new("/dev/shm", "discard");
    let b = create(&format!(
        "memory-backend-file,id=f,size=64K,share=on,discard-data=on,mem-path={}",
        file.s()
    ));
    mem(&b).fill(0xee);
    drop(b);
    let data = fs::read(&file.0).expect("file stays");
    assert_eq!(data.len(), 64 << 10, "size kept");
    assert!(data.iter().all(|&x| x == 0), "contents discarded");
    assert_eq!(fs::metadata(&file.0).expect("stat").blocks(), 0);
}

#[cfg(target_os = "linux")]
#[test]
fn memfd_is_sealed_and_cannot_grow() {
    let b = create("memory-backend-memfd,id=m,size=64K");
    let seals = b.seals().expect("fd").expect("F_GET_SEALS");
    assert_eq!(
        seals,
        libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL
    );
    let fd = b.fd().expect("fd");
    let grow = sys::ftruncate(fd, 128 << 10).expect_err("growing a sealed memfd");
    assert_eq!(grow.raw_os_error(), Some(libc::EPERM));
    let shrink = sys::ftruncate(fd, 4096).expect_err("shrinking a sealed memfd");
    assert_eq!(shrink.raw_os_error(), Some(libc::EPERM));
    // seal=off: no seals can be added, and nothing stops growth.
    let b = create("memory-backend-memfd,id=m,size=64K,seal=off");
    assert_eq!(
        b.seals().expect("fd").expect("F_GET_SEALS"),
        libc::F_SEAL_SEAL
    );
}

#[cfg(target_os = "linux")]
#[test]
fn prealloc_makes_every_page_resident_for_every_backend() {
    let file = TempPath::new("/dev/shm", "prealloc");
    let specs = [
        "memory-backend-ram,id=r,size=130M".to_string(),
        "memory-backend-ram,id=r,size=130M,share=on,prealloc-threads=2".to_string(),
        format!(
            "memory-backend-file,id=f,size=130M,share=on,mem-path={}",
            file.s()
        ),
        "memory-backend-memfd,id=m,size=130M,prealloc-threads=2".to_string(),
        "memory-backend-shm,id=s,size=130M,prealloc-threads=2".to_string(),
    ];
    for spec in specs {
        let lazy = create(&spec);
        let pages = lazy.size() as usize / PAGE;
        assert_eq!(
            lazy.resident_pages().expect("mincore"),
            0,
            "{spec}: nothing resident before"
        );
        assert_eq!(lazy.populate_method(), None);
        drop(lazy);
        let _ = fs::remove_file(&file.0);
        let b = create(&format!("{spec},prealloc=on"));
        assert_eq!(
            b.resident_pages().expect("mincore"),
            pages,
            "{spec}: all resident"
        );
        let rss = testutil::smaps_field(b.as_ptr(), "Rss:");
        assert_eq!(rss, format!("{} kB", b.size() >> 10), "{spec}: all mapped");
        assert_eq!(b.populate_method(), Some(PopulateMethod::Madvise));
        drop(b);
        let _ = fs::remove_file(&file.0);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn hugetlb_memfd_without_reserved_pages_is_a_clean_error() {
    let meminfo = fs::read_to_string("/proc/meminfo").expect("meminfo");
    let free: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("HugePages_Free");
    let spec = "memory-backend-memfd,id=h,size=4M,hugetlb=on,hugetlbsize=2M,prealloc=on";
    if free >= 2 {
        let b = create(spec);
        assert_eq!(b.page_size(), 2 << 20);
        assert_eq!(
            b.resident_pages().expect("mincore"),
            b.size() as usize / PAGE
        );
    } else {
        // Reaching this line at all shows there was no SIGBUS.
        let e = create_err(spec);
        assert!(
            e.to_string().starts_with(
                "memfd backend 'h': hugetlb: can't map 4194304 bytes of 2048 KiB huge pages"
            ),
            "{e}"
        );
        assert!(e.to_string().contains("Cannot allocate memory"), "{e}");
    }
    let e = create_err("memory-backend-memfd,id=h,size=4M,hugetlb=on,hugetlbsize=4M");
    assert!(e.to_string().contains("no huge pages of that size"), "{e}");
    if Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        let e = create_err("memory-backend-memfd,id=h,size=1M,hugetlb=on,hugetlbsize=2M");
        assert!(
            e.to_string()
                .contains("size=0x100000 is smaller than the page size 0x200000"),
            "{e}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn madvise_options_show_in_vm_flags() {
    let b = create("memory-backend-ram,id=r,size=4M,reserve=off,dump=off,merge=off");
    let flags = testutil::vm_flags(b.as_ptr());
    for f in ["nr", "dd", "hg"] {
        assert!(flags.contains(&f.to_string()), "missing {f} in {flags:?}");
    }
    assert!(!flags.contains(&"mg".to_string()), "{flags:?}");
    let b = create("memory-backend-ram,id=r,size=4M");
    let flags = testutil::vm_flags(b.as_ptr());
    for f in ["nr", "dd"] {
        assert!(
            !flags.contains(&f.to_string()),
            "unexpected {f} in {flags:?}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn host_nodes_bind_the_memory() {
    let b = create("memory-backend-ram,id=r,size=4M,host-nodes=0,policy=bind");
    assert!(
        testutil::numa_policy(b.as_ptr()).starts_with("bind:0"),
        "{}",
        testutil::numa_policy(b.as_ptr())
    );
    let b = create("memory-backend-ram,id=r,size=4M,host-nodes=0,policy=interleave,prealloc=on");
    assert!(testutil::numa_policy(b.as_ptr()).starts_with("interleave:0"));
    let e = create_err("memory-backend-ram,id=r,size=4M,host-nodes=127,policy=bind");
    assert_eq!(e.option(), Some("host-nodes"));
    assert!(
        e.to_string()
            .starts_with("ram backend 'r': host-nodes: can't bind memory to host NUMA nodes [127]"),
        "{e}"
    );
}

#[test]
fn size_is_rounded_up_to_the_page_size() {
    let b = create("memory-backend-memfd,id=m,size=5000");
    assert_eq!(b.size(), 8192);
    assert_eq!(b.config().size(), 5000);
}

#[test]
fn four_backends_map_with_basic_options() {
    let file = TempPath::new("/tmp", "smoke");
    let cases = [
        (
            "memory-backend-ram,id=r,size=4M".to_string(),
            BackendKind::Ram,
            false,
            false,
        ),
        (
            "memory-backend-ram,id=r,size=4M,share=on".to_string(),
            BackendKind::Ram,
            true,
            true,
        ),
        (
            format!("memory-backend-file,id=f,size=4M,mem-path={}", file.s()),
            BackendKind::File,
            false,
            true,
        ),
        (
            "memory-backend-memfd,id=m,size=4M".to_string(),
            BackendKind::Memfd,
            true,
            true,
        ),
        (
            "memory-backend-shm,id=s,size=4M".to_string(),
            BackendKind::Shm,
            true,
            true,
        ),
    ];
    for (spec, kind, shared, has_fd) in cases {
        let b = create(&spec);
        assert_eq!(b.kind(), kind, "{spec}");
        assert_eq!(b.shared(), shared, "{spec}");
        assert_eq!(b.fd().is_some(), has_fd, "{spec}");
        assert_eq!(b.size(), 4 << 20);
        assert_eq!(b.as_ptr() as usize % (2 << 20), 0, "{spec}: 2 MiB aligned");
        let m = mem(&b);
        m[0] = 0xa5;
        m[(4 << 20) - 1] = 0x5a;
        assert_eq!((m[0], m[(4 << 20) - 1]), (0xa5, 0x5a));
    }
}

#[test]
fn drop_unmaps_and_closes() {
    let b = create("memory-backend-memfd,id=dropcheck-unique,size=64K");
    let fd = b.fd().expect("fd").as_fd().as_raw_fd();
    let addr = b.as_ptr() as usize;
    let maps = || fs::read_to_string("/proc/self/maps").expect("maps");
    assert!(maps().contains("memfd:shmvm-dropcheck-unique"));
    drop(b);
    assert!(!maps().contains("memfd:shmvm-dropcheck-unique"), "unmapped");
    let link = fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string());
    assert!(
        !link.is_ok_and(|l| l.contains("shmvm-dropcheck-unique")),
        "closed"
    );
    let _ = addr;
}

#[test]
fn backend_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Backend>();
}

#[test]
fn reserve_off_is_refused_only_where_the_kernel_would_ignore_it() {
    // Private writable base pages with overcommit_memory=2: refused.
    assert!(noreserve_ignored(Some("2\n"), false, true, false));
    // Other overcommit modes, hugetlb, read-only and shared fd mappings: honoured.
    assert!(!noreserve_ignored(Some("0\n"), false, true, false));
    assert!(!noreserve_ignored(Some("1\n"), false, true, false));
    assert!(!noreserve_ignored(Some("2\n"), true, true, false));
    assert!(!noreserve_ignored(Some("2\n"), false, false, false));
    assert!(!noreserve_ignored(Some("2\n"), false, true, true));
    // On this host (overcommit_memory is not 2 here) reserve=off works.
    if fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|s| s.trim() != "2") {
        create("memory-backend-ram,id=r,size=4M,reserve=off");
    }
}

#[test]
fn host_side_errors_name_the_option() {
    let e = create_err("memory-backend-ram,id=r,size=0xffffffffffffffff");
    assert_eq!(
        e.to_string(),
        "ram backend 'r': size=0xffffffffffffffff is too large"
    );
    let e = create_err("memory-backend-file,id=f,size=4K,mem-path=/nonexistent-shmvm-dir/file");
    assert!(
        e.to_string().starts_with(
            "file backend 'f': mem-path: can't create '/nonexistent-shmvm-dir/file': "
        ),
        "{e}"
    );
    let e = create_err("memory-backend-ram,id=r,size=1E");
    assert!(
        e.to_string()
            .starts_with("ram backend 'r': size: can't map 1152921504606846976 bytes: "),
        "{e}"
    );
}

#[test]
fn anonymous_shm_retries_a_name_that_exists_and_leaves_it_alone() {
    let taken = format!("/shmvm-memtest-{}-taken", std::process::id());
    let path = format!("/dev/shm{taken}");
    fs::write(&path, b"not ours").expect("pre-create");
    let cfg = cfg("memory-backend-shm,id=s,size=64K");
    let ctx = Ctx { cfg: &cfg };
    let mut names = vec![
        format!("/shmvm-memtest-{}-fresh", std::process::id()),
        taken.clone(),
        taken.clone(),
    ];
    let fd = ctx.anonymous_shm_named(|| names.pop().expect("a name"));
    let after = fs::read(&path);
    let _ = fs::remove_file(&path);
    let fd = fd.expect("third name is free");
    assert!(names.is_empty(), "both clashing names were tried first");
    assert_eq!(after.expect("still there"), b"not ours");
    assert!(
        !Path::new(&format!(
            "/dev/shm/shmvm-memtest-{}-fresh",
            std::process::id()
        ))
        .exists()
    );
    assert_eq!(
        fs::File::from(fd.try_clone().expect("dup"))
            .metadata()
            .expect("fstat")
            .mode()
            & 0o777,
        0,
        "mode 0"
    );
    // Only clashes: a clear error after the last attempt, nothing created.
    fs::write(&path, b"not ours").expect("pre-create");
    let e = ctx
        .anonymous_shm_named(|| taken.clone())
        .expect_err("all names taken");
    let _ = fs::remove_file(&path);
    assert!(
        e.to_string()
            .contains("no free shm name after 100 attempts"),
        "{e}"
    );
}

#[test]
fn dangling_symlink_mem_path_is_refused_at_once() {
    let link = TempPath::new("/tmp", "dangling");
    std::os::unix::fs::symlink("/nonexistent/shmvm-target", &link.0).expect("symlink");
    let e = create_err(&format!(
        "memory-backend-file,id=f,size=64K,mem-path={}",
        link.s()
    ));
    assert_eq!(e.option(), Some("mem-path"), "{e}");
    assert!(e.to_string().contains("dangling symbolic link"), "{e}");
}

#[test]
fn fifo_mem_path_is_refused_without_blocking() {
    for ro in [",readonly=on", ""] {
        let fifo = TempPath::new("/tmp", "fifo");
        let c = std::ffi::CString::new(fifo.s()).expect("path");
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = create_err(&format!(
            "memory-backend-file,id=f,size=64K,mem-path={}{ro}",
            fifo.s()
        ));
        assert_eq!(e.option(), Some("mem-path"), "{e}");
        assert!(e.to_string().contains("is a FIFO"), "{e}");
    }
}

#[test]
fn created_file_is_reported_and_an_existing_one_is_not() {
    let file = TempPath::new("/tmp", "created");
    let b = create(&format!(
        "memory-backend-file,id=f,size=64K,mem-path={}",
        file.s()
    ));
    assert_eq!(b.created_file(), Some(file.0.as_path()));
    drop(b);
    let b = create(&format!(
        "memory-backend-file,id=f,size=64K,mem-path={}",
        file.s()
    ));
    assert_eq!(b.created_file(), None);
}

#[test]
fn named_shm_clash_tells_live_from_stale_and_reclaim_replaces_only_stale() {
    let name = format!("/shmvm-memtest-{}-reclaim", std::process::id());
    let path = format!("/dev/shm{name}");
    let spec = format!("memory-backend-shm,id=s,size=64K,name={name}");
    let live = create(&spec);
    let e = create_err(&format!("{spec},reclaim=on")).to_string();
    assert!(e.contains("in use by a running shmvm"), "{e}");
    drop(live);
    // What a SIGKILLed shmvm leaves: the object, and no lock on it.
    fs::write(&path, b"stale").expect("pre-create");
    let e = create_err(&spec).to_string();
    assert!(e.contains("no running shmvm holds it"), "{e}");
    assert!(e.contains("reclaim=on"), "{e}");
    let b = create(&format!("{spec},reclaim=on"));
    assert_eq!(
        &mem(&b)[..5],
        &[0u8; 5],
        "a fresh object, not the stale data"
    );
    drop(b);
    assert!(!Path::new(&path).exists(), "removed at the end as usual");
}

#[test]
fn prealloc_beyond_the_host_is_refused_and_leaves_nothing() {
    let name = format!("/shmvm-memtest-{}-toobig", std::process::id());
    for spec in [
        "memory-backend-ram,id=r,size=1T,prealloc=on".to_string(),
        format!("memory-backend-shm,id=r,size=1T,prealloc=on,name={name}"),
    ] {
        let e = create_err(&spec);
        assert_eq!(e.option(), Some("prealloc"), "{e}");
        assert!(e.to_string().contains("available"), "{e}");
        assert!(!Path::new(&format!("/dev/shm{name}")).exists());
    }
    let file = TempPath::new("/dev/shm", "toobig");
    let e = create_err(&format!(
        "memory-backend-file,id=f,size=1T,prealloc=on,mem-path={}",
        file.s()
    ));
    assert_eq!(e.option(), Some("prealloc"), "{e}");
    assert!(!file.0.exists(), "created file left behind: {e}");
}
