//! `ivshmem-peer`: a host program as an ivshmem peer (what QEMU's
//! `ivshmem-client` is, scriptable): show the peers, ring, wait, and play
//! the doorbell ping-pong of the test kernel.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ivshmem_server::{Peer, pingpong};

#[derive(Debug, Parser)]
#[command(
    name = "ivshmem-peer",
    version,
    about = "A host peer of an ivshmem server"
)]
struct Args {
    /// The server's socket.
    #[arg(
        short = 'S',
        value_name = "PATH",
        default_value = "/tmp/ivshmem_socket"
    )]
    socket: PathBuf,
    /// Give up after this many seconds.
    #[arg(short = 't', long, default_value_t = 60)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// This peer's id, vectors, region size and the other peers.
    Info,
    /// Ring VECTOR of PEER.
    Ring { peer: u16, vector: usize },
    /// Wait for a doorbell on VECTOR.
    Wait { vector: usize },
    /// Ping PEER ROUNDS times; print median and p99 round trips.
    Ping { peer: u16, rounds: u64 },
    /// Answer PEER's pings ROUNDS times.
    Pong { peer: u16, rounds: u64 },
    /// COUNT times: wait for a doorbell on VECTOR, then ring VECTOR of every
    /// other peer (an echo for guests that ring this peer and wait).
    Echo { vector: usize, count: u64 },
}

fn run(a: Args) -> Result<(), ivshmem_server::peer::PeerError> {
    let timeout = Duration::from_secs(a.timeout);
    let mut p = Peer::connect(&a.socket, timeout)?;
    match a.cmd {
        Cmd::Info => println!(
            "id={} vectors={} size={} peers={:?}",
            p.id(),
            p.vectors(),
            p.size(),
            p.peers()
        ),
        Cmd::Ring { peer, vector } => p.ring(peer, vector)?,
        Cmd::Wait { vector } => println!("rings={}", p.wait(vector, timeout)?),
        Cmd::Ping { peer, rounds } => {
            let l = pingpong::ping(&mut p, peer, rounds, timeout)?;
            println!(
                "ivshmem-peer: pingpong rounds={rounds} median_ns={} p99_ns={}",
                l.percentile(50).as_nanos(),
                l.percentile(99).as_nanos()
            );
        }
        Cmd::Pong { peer, rounds } => pingpong::pong(&mut p, peer, rounds, timeout)?,
        Cmd::Echo { vector, count } => {
            println!("ivshmem-peer: id={}", p.id());
            for _ in 0..count {
                let n = p.wait(vector, timeout)?;
                let peers = p.peers();
                for &peer in &peers {
                    p.ring(peer, vector)?;
                }
                println!("ivshmem-peer: echo rings={n} to={peers:?}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
