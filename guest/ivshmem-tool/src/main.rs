//! `ivshmem-tool`: inspect and exercise ivshmem-plain shared memory from inside
//! a Linux guest (through sysfs `resource2`), or the same memory from the host
//! through its backing file (`--path /dev/shm/NAME`).

mod blkbench;
mod device;
mod doorbell;
mod fsbench;
mod parse;
mod pattern;
mod region;
mod vsock;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use thiserror::Error;

use device::{DeviceError, PciDevice};
use region::{Region, RegionError};

const DEFAULT_SEED: &str = "0x5eed";

#[derive(Debug, Parser)]
#[command(
    name = "ivshmem-tool",
    version,
    about = "Inspect and exercise ivshmem-plain (1af4:1110) shared memory",
    long_about = "Inspect and exercise ivshmem-plain (1af4:1110) shared memory.\n\n\
        Inside a Linux guest it finds the device in sysfs, enables it and maps BAR2 \
        through resource2 (Linux has no ivshmem driver; run as root). On the host, \
        --path maps the backing file instead (/dev/shm/NAME for memory-backend-shm, \
        the mem-path of memory-backend-file), so both sides can check each other's \
        patterns.\n\nNumbers take decimal, 0x hex and K/M/G suffixes. Exit status: 0 ok, \
        1 failure (e.g. a pattern mismatch), 2 usage error."
)]
struct Cli {
    /// PCI device to use (`0000:00:02.0` or `00:02.0`); default: the only ivshmem device.
    #[arg(
        short,
        long,
        value_name = "BDF",
        global = true,
        conflicts_with = "path"
    )]
    device: Option<String>,
    /// Use this file (e.g. /dev/shm/NAME) instead of a PCI device.
    #[arg(short, long, value_name = "FILE", global = true)]
    path: Option<PathBuf>,
    /// Directory of PCI devices.
    #[arg(
        long,
        value_name = "DIR",
        global = true,
        default_value = "/sys/bus/pci/devices"
    )]
    sysfs: PathBuf,
    #[command(subcommand)]
    command: Command,
}

/// Offset/length of a range; the length defaults to the rest of the region.
#[derive(Debug, clap::Args)]
struct Range {
    /// Start of the range.
    #[arg(long, value_name = "OFF", default_value = "0", value_parser = parse::number)]
    offset: u64,
    /// Length of the range [default: to the end of the region].
    #[arg(long, value_name = "LEN", value_parser = parse::number)]
    len: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every ivshmem device: BDF, IDs, class, BARs (one line each).
    List,
    /// Describe the selected device (or file) as key=value pairs.
    Info,
    /// Print LEN bytes at OFF as a hex dump (or raw with --raw).
    Read {
        /// Offset in the region.
        #[arg(value_parser = parse::number)]
        offset: u64,
        /// Number of bytes.
        #[arg(value_parser = parse::number)]
        len: u64,
        /// Write the bytes to stdout unformatted.
        #[arg(long)]
        raw: bool,
    },
    /// Write DATA at OFF: text, or `hex:00ff..` for bytes.
    Write {
        /// Offset in the region.
        #[arg(value_parser = parse::number)]
        offset: u64,
        /// Text, or `hex:00ff..` for raw bytes.
        #[arg(value_parser = parse::data)]
        data: std::vec::Vec<u8>,
    },
    /// Wait until the bytes at OFF equal DATA (a simple handshake with the other side).
    Wait {
        /// Offset in the region.
        #[arg(value_parser = parse::number)]
        offset: u64,
        /// The bytes to wait for: text, or `hex:00ff..`.
        #[arg(value_parser = parse::data)]
        data: std::vec::Vec<u8>,
        /// Give up (exit 1) after this many milliseconds.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
    },
    /// Fill a range with the pattern for SEED (a function of seed and offset).
    Fill {
        /// Pattern seed (both sides must use the same one).
        #[arg(long, default_value = DEFAULT_SEED, value_parser = parse::number)]
        seed: u64,
        #[command(flatten)]
        range: Range,
    },
    /// Check a range against the pattern for SEED; exit 1 on any mismatch.
    Verify {
        /// Pattern seed (both sides must use the same one).
        #[arg(long, default_value = DEFAULT_SEED, value_parser = parse::number)]
        seed: u64,
        #[command(flatten)]
        range: Range,
    },
    /// ivshmem-doorbell: this peer's id (IVPosition), its vectors, and the
    /// peers that announced themselves in the region (the ping-pong layout:
    /// READY at 0x1000 + 8*id).
    Peers,
    /// ivshmem-doorbell: ring VECTOR of PEER (needs the ivshmem_db module).
    Ring {
        #[arg(value_parser = parse::number)]
        peer: u64,
        #[arg(value_parser = parse::number)]
        vector: u64,
    },
    /// ivshmem-doorbell: wait for a doorbell on VECTOR (needs the ivshmem_db
    /// module); prints how many rings it collected.
    WaitIrq {
        #[arg(value_parser = parse::number)]
        vector: u64,
        /// Give up (exit 1) after this many milliseconds.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
    },
    /// vsock: listen on PORT, accept one connection, echo one line back
    /// (prints "vsock-echo listening" once bound, then the line).
    VsockEcho {
        #[arg(value_parser = parse::number)]
        port: u64,
        /// Give up (exit 1) after this many milliseconds.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
    },
    /// Play the host side of the test kernel's handshake (guest/protocol):
    /// wait for the guest's P1, verify it, write P2, wait for its verdict.
    Handshake {
        /// Give up (exit 1) after this many milliseconds.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
    },
    /// Be party SLOT of PARTIES in the test kernel's slots protocol.
    Slots {
        /// This party's slot.
        #[arg(value_parser = parse::number)]
        slot: u64,
        /// How many parties write slots.
        #[arg(value_parser = parse::number)]
        parties: u64,
        /// The seed every party uses.
        #[arg(long, default_value = DEFAULT_SEED, value_parser = parse::number)]
        seed: u64,
        /// Give up (exit 1) after this many milliseconds.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
    },
    /// Measure a block device (--path, e.g. /dev/vda): sequential 1 MiB and random
    /// 4 KiB writes then reads, O_DIRECT at queue depth 1, medians of RUNS. Overwrites the range.
    Blkbench {
        /// Start of the range.
        #[arg(long, value_name = "OFF", default_value = "0", value_parser = parse::number)]
        offset: u64,
        /// Length of the range.
        #[arg(long, value_name = "LEN", value_parser = parse::number)]
        len: u64,
        /// Time per run of each pattern, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        millis: u64,
        /// Runs of each pattern (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Measure a file system (e.g. a virtio-fs mount): unpack a deterministic tree of
    /// small files (1-16 KiB) into DIR/runK and sync it, drop the caches, read it all
    /// back through a directory walk (its checksum must be the generator's), then
    /// write, sync and read back one large file; medians of RUNS. The last tree stays.
    Fsbench {
        /// Directory to work in (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Seed of the tree's contents.
        #[arg(long, default_value = DEFAULT_SEED, value_parser = parse::number)]
        seed: u64,
        /// Small files in the tree.
        #[arg(long, default_value_t = 1024)]
        files: u32,
        /// Size of the large file.
        #[arg(long, value_name = "LEN", default_value = "32M", value_parser = parse::number)]
        big: u64,
        /// Runs (the median of each rate is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Do not write /proc/sys/vm/drop_caches between writing and reading.
        #[arg(long)]
        no_drop_caches: bool,
    },
    /// The checksum fsbench's tree of SEED and FILES must have, and with --dir that of
    /// the tree found there (each file's path, length and bytes, in sorted order).
    Fstree {
        /// A tree to walk and sum.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Seed of the tree's contents.
        #[arg(long, default_value = DEFAULT_SEED, value_parser = parse::number)]
        seed: u64,
        /// Small files in the tree.
        #[arg(long, default_value_t = 1024)]
        files: u32,
    },
    /// Measure write then read bandwidth over a range (MB/s, 10^6 bytes). Overwrites it.
    Bench {
        #[command(flatten)]
        range: Range,
        /// Minimum time per direction, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        millis: u64,
    },
}

/// What can go wrong running a command.
#[derive(Debug, Error)]
enum ToolError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "verify FAILED: {count} of {len:#x} bytes differ from seed {seed:#x}; first at offset {first:#x} (expected {expected:#04x}, found {found:#04x})"
    )]
    Mismatch {
        seed: u64,
        len: u64,
        count: u64,
        first: u64,
        expected: u8,
        found: u8,
    },
    #[error("wait: timed out after {ms} ms: bytes at {offset:#x} are {found}, want {want}")]
    WaitTimeout {
        ms: u64,
        offset: u64,
        found: String,
        want: String,
    },
    #[error("{what}: {source}")]
    Protocol {
        what: &'static str,
        source: protocol::Error,
    },
    #[error("writing to stdout: {0}")]
    Stdout(std::io::Error),
    #[error(transparent)]
    Doorbell(#[from] doorbell::DoorbellError),
    #[error(transparent)]
    Vsock(#[from] vsock::VsockError),
    #[error("{what} {value} is out of range (at most {max})")]
    Range {
        what: &'static str,
        value: u64,
        max: u64,
    },
}

fn small(what: &'static str, value: u64, max: u16) -> Result<u16, ToolError> {
    u16::try_from(value)
        .ok()
        .filter(|v| *v <= max)
        .ok_or(ToolError::Range {
            what,
            value,
            max: u64::from(max),
        })
}

/// The READY magic of the ping-pong layout (ivshmem_server::pingpong).
const READY_OFF: u64 = 0x1000;
const READY: u64 = 0x5245_4144_5944_4221;

/// The memory being worked on and how to describe it.
struct Target {
    region: Region,
    describe: String,
}

fn open_target(cli: &Cli) -> Result<Target, ToolError> {
    if let Some(path) = &cli.path {
        let file_err = |source| ToolError::File {
            path: path.clone(),
            source,
        };
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(file_err)?;
        let size = file.metadata().map_err(file_err)?.len();
        let region = Region::map(file, size, &path.display().to_string())?;
        return Ok(Target {
            describe: format!("source=file path={} size={size:#x}", path.display()),
            region,
        });
    }
    let dev: PciDevice = device::select(&cli.sysfs, cli.device.as_deref())?;
    dev.enable()?;
    let (file, size) = dev.open_bar2()?;
    let region = Region::map(file, size, &format!("{} BAR2", dev.bdf))?;
    Ok(Target {
        describe: format!("source=pci {dev}"),
        region,
    })
}

fn range(region: &Region, r: &Range) -> (u64, u64) {
    let len = r
        .len
        .unwrap_or_else(|| region.size().saturating_sub(r.offset));
    (r.offset, len)
}

fn run(cli: &Cli) -> Result<(), ToolError> {
    let say = |s: String| writeln!(std::io::stdout().lock(), "{s}").map_err(ToolError::Stdout);
    match &cli.command {
        Command::List => {
            let all = device::scan(&cli.sysfs)?;
            if all.is_empty() {
                return Err(DeviceError::NoneFound(cli.sysfs.clone()).into());
            }
            for d in all {
                say(d.to_string())?;
            }
        }
        Command::Info => {
            let t = open_target(cli)?;
            say(t.describe)?;
        }
        Command::Read { offset, len, raw } => {
            let t = open_target(cli)?;
            t.region.check_range(*offset, *len)?;
            let mut buf = vec![0u8; usize::try_from(*len).unwrap_or(usize::MAX)];
            t.region.read(*offset, &mut buf)?;
            let mut out = std::io::stdout().lock();
            if *raw {
                out.write_all(&buf).map_err(ToolError::Stdout)?;
            } else {
                out.write_all(parse::hexdump(*offset, &buf).as_bytes())
                    .map_err(ToolError::Stdout)?;
            }
        }
        Command::Write { offset, data } => {
            let t = open_target(cli)?;
            t.region.write(*offset, data)?;
            say(format!(
                "write ok: offset={offset:#x} len={:#x}",
                data.len()
            ))?;
        }
        Command::Wait {
            offset,
            data,
            timeout_ms,
        } => {
            let t = open_target(cli)?;
            let start = Instant::now();
            let mut found = vec![0u8; data.len()];
            loop {
                t.region.read(*offset, &mut found)?;
                if found == *data {
                    break;
                }
                if start.elapsed() >= Duration::from_millis(*timeout_ms) {
                    return Err(ToolError::WaitTimeout {
                        ms: *timeout_ms,
                        offset: *offset,
                        found: parse::hex(&found),
                        want: parse::hex(data),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            say(format!(
                "wait ok: offset={offset:#x} len={:#x} after {} ms",
                data.len(),
                start.elapsed().as_millis()
            ))?;
        }
        Command::Fill { seed, range: r } => {
            let t = open_target(cli)?;
            let (offset, len) = range(&t.region, r);
            t.region.fill_pattern(*seed, offset, len)?;
            say(format!(
                "fill ok: seed={seed:#x} offset={offset:#x} len={len:#x}"
            ))?;
        }
        Command::Verify { seed, range: r } => {
            let t = open_target(cli)?;
            let (offset, len) = range(&t.region, r);
            if let Some(m) = t.region.verify_pattern(*seed, offset, len)? {
                return Err(ToolError::Mismatch {
                    seed: *seed,
                    len,
                    count: m.count,
                    first: m.first_offset,
                    expected: m.expected,
                    found: m.found,
                });
            }
            say(format!(
                "verify ok: seed={seed:#x} offset={offset:#x} len={len:#x}"
            ))?;
        }
        Command::Peers => {
            let dev = device::select(&cli.sysfs, cli.device.as_deref())?;
            dev.enable()?;
            let regs = doorbell::Registers::open(&dev)?;
            let id = regs.iv_position()?;
            let vectors = doorbell::vectors(&dev)?;
            let t = open_target(cli)?;
            let mut ready = Vec::new();
            let mut b = [0u8; 8];
            for peer in 0..((t.region.size().saturating_sub(READY_OFF) / 8).min(4096)) {
                t.region.read(READY_OFF + 8 * peer, &mut b)?;
                if u64::from_le_bytes(b) == READY {
                    ready.push(peer.to_string());
                }
            }
            say(format!(
                "bdf={} id={id} vectors={vectors} ready_peers={}",
                dev.bdf,
                ready.join(",")
            ))?;
        }
        Command::Ring { peer, vector } => {
            let dev = device::select(&cli.sysfs, cli.device.as_deref())?;
            dev.enable()?;
            let (peer, vector) = (
                small("peer", *peer, u16::MAX)?,
                small("vector", *vector, 255)?,
            );
            doorbell::Registers::open(&dev)?.ring(peer, vector)?;
            say(format!("ring ok: peer={peer} vector={vector}"))?;
        }
        Command::WaitIrq { vector, timeout_ms } => {
            let dev = device::select(&cli.sysfs, cli.device.as_deref())?;
            let vector = small("vector", *vector, 255)?;
            let start = Instant::now();
            let n = doorbell::wait_irq(&dev, vector, Duration::from_millis(*timeout_ms))?;
            say(format!(
                "wait-irq ok: vector={vector} rings={n} after {} ms",
                start.elapsed().as_millis()
            ))?;
        }
        Command::VsockEcho { port, timeout_ms } => {
            let port = u32::try_from(*port).map_err(|_| ToolError::Range {
                what: "port",
                value: *port,
                max: u64::from(u32::MAX),
            })?;
            let line = vsock::echo(port, Duration::from_millis(*timeout_ms), || {
                let _ = say("vsock-echo listening".into());
            })?;
            say(format!("vsock-echo ok: {line}"))?;
        }
        Command::Handshake { timeout_ms } => {
            let t = open_target(cli)?;
            let bytes = protocol::host_handshake(&t.region, &mut Deadline::after(*timeout_ms))
                .map_err(|source| ToolError::Protocol {
                    what: "handshake",
                    source,
                })?;
            say(format!("handshake ok: bytes={bytes:#x}"))?;
        }
        Command::Slots {
            slot,
            parties,
            seed,
            timeout_ms,
        } => {
            let t = open_target(cli)?;
            protocol::slots(
                &t.region,
                *slot,
                *parties,
                *seed,
                &mut Deadline::after(*timeout_ms),
            )
            .map_err(|source| ToolError::Protocol {
                what: "slots",
                source,
            })?;
            say(format!("slots ok: slot={slot} parties={parties}"))?;
        }
        Command::Blkbench {
            offset,
            len,
            millis,
            runs,
        } => {
            let path = cli
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("/dev/vda"));
            let r = blkbench::run(&path, *offset, *len, Duration::from_millis(*millis), *runs)
                .map_err(|source| ToolError::File {
                    path: path.clone(),
                    source,
                })?;
            say(format!(
                "blkbench seq_read_MBps={:.1} seq_write_MBps={:.1} rand_read_iops={:.0} rand_write_iops={:.0} rand_read_MBps={:.2} rand_write_MBps={:.2}",
                r.seq_read.mb_per_s(),
                r.seq_write.mb_per_s(),
                r.rand_read.iops(),
                r.rand_write.iops(),
                r.rand_read.mb_per_s(),
                r.rand_write.mb_per_s(),
            ))?;
        }
        Command::Fsbench {
            dir,
            seed,
            files,
            big,
            runs,
            no_drop_caches,
        } => {
            let tree = fsbench::Tree {
                seed: *seed,
                files: *files,
            };
            let r = fsbench::run(dir, tree, *big, *runs, !no_drop_caches).map_err(|source| {
                ToolError::File {
                    path: dir.clone(),
                    source,
                }
            })?;
            // Each run's rates too: create,read,write,read per run, runs split by '/'.
            let each: Vec<String> = r
                .runs
                .iter()
                .map(|x| format!("{:.0},{:.0},{:.1},{:.1}", x[0], x[1], x[2], x[3]))
                .collect();
            say(format!(
                "fsbench create_fps={:.0} read_fps={:.0} seq_write_MBps={:.1} seq_read_MBps={:.1} files={} bytes={} sum={:016x} tree={} runs={}",
                r.create_fps,
                r.read_fps,
                r.seq_write_mbps,
                r.seq_read_mbps,
                r.sum.files,
                r.sum.bytes,
                r.sum.fnv,
                r.last_tree.display(),
                each.join("/")
            ))?;
        }
        Command::Fstree { dir, seed, files } => {
            let want = fsbench::Tree {
                seed: *seed,
                files: *files,
            }
            .expected();
            let mut line = format!("fstree expected_sum={:016x}", want.fnv);
            if let Some(d) = dir {
                let got = fsbench::walk(d).map_err(|source| ToolError::File {
                    path: d.clone(),
                    source,
                })?;
                line += &format!(
                    " files={} bytes={} sum={:016x}",
                    got.files, got.bytes, got.fnv
                );
            }
            say(line)?;
        }
        Command::Bench { range: r, millis } => {
            let t = open_target(cli)?;
            let (offset, len) = range(&t.region, r);
            let (w, rd) = t
                .region
                .bench(offset, len, Duration::from_millis(*millis))?;
            say(format!(
                "bench offset={offset:#x} len={len:#x} write_MBps={:.1} read_MBps={:.1} write_passes={} read_passes={}",
                w.mb_per_s(),
                rd.mb_per_s(),
                w.passes,
                rd.passes
            ))?;
        }
    }
    Ok(())
}

/// The protocols' clock: a deadline, polled every 100 us.
struct Deadline(Instant);

impl Deadline {
    fn after(ms: u64) -> Deadline {
        Deadline(Instant::now() + Duration::from_millis(ms))
    }
}

impl protocol::Clock for Deadline {
    fn expired(&mut self) -> bool {
        Instant::now() > self.0
    }
    fn pause(&mut self) {
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ivshmem-tool: {e}");
            ExitCode::FAILURE
        }
    }
}
