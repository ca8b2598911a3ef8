//! The legacy (non-PCI) devices: one table of what sits at which port,
//! built from `layout.rs`, placed by one loop.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::sync::{Arc, Mutex};

use devices::acpi_pm::AcpiSleep;
use devices::bus::SharedDevice;
use devices::debug_exit::{DebugExit, ExitHook};
use devices::i8042::I8042;
use devices::serial::Serial;

use crate::io::{BusKind, IoBuses};
use crate::layout;

/// Which model a table row builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    /// The console UART (built by the caller: it is shared with the input
    /// thread and the output coalescing).
    Com1,
    AcpiSleep,
    I8042,
}

/// Every machine has these, at these ports.
const TABLE: &[(&str, Model, u16, u64)] = &[
    ("serial0", Model::Com1, layout::COM1_PORT, Serial::PORTS),
    (
        "acpi-sleep",
        Model::AcpiSleep,
        layout::ACPI_SLEEP_PORT,
        AcpiSleep::PORTS,
    ),
    ("i8042", Model::I8042, layout::I8042_PORT, I8042::PORTS),
];

/// Errors placing a legacy device; each names it.
#[derive(Debug, thiserror::Error)]
#[error("{device} at port {port:#x}: {err}")]
pub struct Error {
    device: String,
    port: u64,
    #[source]
    err: devices::bus::Error,
}

impl Error {
    /// Always the user's to fix: only `-device isa-debug-exit,iobase=`
    /// can collide with another device.
    pub fn exit_code(&self) -> i32 {
        2
    }
}

/// `-device isa-debug-exit` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugExitPorts {
    pub iobase: u16,
    pub iosize: u16,
}

fn named(device: &str, port: u64) -> impl FnOnce(devices::bus::Error) -> Error {
    let device = device.to_string();
    move |err| Error { device, port, err }
}

/// Puts the table's devices on the port bus. `hook` is how a device ends
/// the VM. Returns the i8042 (a snapshot saves its state).
pub fn place(
    io: &IoBuses,
    com1: &Arc<Mutex<Serial>>,
    hook: &ExitHook,
) -> Result<Arc<Mutex<I8042>>, Error> {
    let i8042 = Arc::new(Mutex::new(I8042::new(hook.clone())));
    for &(name, model, port, len) in TABLE {
        let dev: SharedDevice = match model {
            Model::Com1 => com1.clone(),
            Model::AcpiSleep => Arc::new(Mutex::new(AcpiSleep::new(hook.clone()))),
            Model::I8042 => i8042.clone(),
        };
        let port = u64::from(port);
        io.add_shared(BusKind::Pio, name, dev, port, len)
            .map_err(named(name, port))?;
    }
    Ok(i8042)
}

/// Puts the `-device isa-debug-exit` ports on the port bus, after every
/// other device, so a collision names the debug-exit device.
pub fn place_debug_exits(
    io: &IoBuses,
    hook: &ExitHook,
    debug_exits: &[DebugExitPorts],
) -> Result<(), Error> {
    for d in debug_exits {
        let port = u64::from(d.iobase);
        io.add(
            BusKind::Pio,
            "isa-debug-exit",
            DebugExit::new(hook.clone()),
            port,
            u64::from(d.iosize),
        )
        .map_err(named("-device isa-debug-exit", port))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::notifier::Notifier;

    fn com1() -> Arc<Mutex<Serial>> {
        Arc::new(Mutex::new(Serial::new(
            Notifier::new().unwrap(),
            Box::new(std::io::sink()),
        )))
    }

    #[test]
    fn the_table_is_placed_and_a_colliding_debug_exit_is_named() {
        let io = IoBuses::new();
        let hook: ExitHook = Arc::new(|_| {});
        place(&io, &com1(), &hook).unwrap();
        let dbg = DebugExitPorts {
            iobase: 0x501,
            iosize: 2,
        };
        place_debug_exits(&io, &hook, &[dbg]).unwrap();
        let names: Vec<_> = io
            .bus_stats()
            .into_iter()
            .map(|s| (s.name, s.base))
            .collect();
        assert_eq!(
            names,
            [
                ("serial0".to_string(), Some(0x3f8)),
                ("acpi-sleep".to_string(), Some(0x3c0)),
                ("i8042".to_string(), Some(0x60)),
                ("isa-debug-exit".to_string(), Some(0x501)),
            ]
        );
        let io = IoBuses::new();
        place(&io, &com1(), &hook).unwrap();
        let dbg = DebugExitPorts {
            iobase: 0x3fc,
            iosize: 4,
        };
        let e = place_debug_exits(&io, &hook, &[dbg]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .starts_with("-device isa-debug-exit at port 0x3fc: bus range 0x3fc+0x4 overlaps"),
            "{e}"
        );
    }
}
